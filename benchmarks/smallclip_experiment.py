"""The controlled experiment that validates All − Clean: train with and without known overlap, compare.

The CLIP paper (Sec. 5) estimates how much overlap inflated an accuracy as All − Clean, measured on one
model. Its true value needs a model trained without the overlapping examples: the counterfactual. Here
the overlap is planted, so both are measured:

- evaluation set: the tuxpaint-stamps-default stamps that have a caption file (785 of 796), their 16
  top-level categories as classes;
- a random half of the stamps, stratified by category (seed ``--split-seed``), is planted: model A is
  pretrained on openclipart-png plus those stamps, each with a caption made from its path ("frog,
  amphibians, animals": the contamination carries the label word, as a web page that names the class);
- model B is pretrained on openclipart-png alone; same architecture, steps, batch and seed (B is the
  shipped model's run when ``--baseline`` points at it: a finished run is not retrained);
- model C is pretrained on openclipart-png plus the OTHER half, captioned the same way: it has seen as
  much Tux Paint as A, but none of A's planted stamps;
- all are scored zero-shot (the paper's 80 templates, ``scoring.build_classifier``) on every stamp.

Two counterfactuals, two "true" inflations of A's accuracy:
- against B (no Tux Paint at all): acc_A(All) − acc_B(All). It includes what A learnt about the stamps'
  style and label words from the planted half that helps on the unplanted half too (acc_A − acc_B on
  Clean), which no split of A's evaluation set can see;
- against a model that saw as much Tux Paint but not the stamp in question (C on the planted half, A
  itself on the other): the inflation due to the duplicates themselves, which is what All − Clean aims at.

Reported: the audit's estimate All − Clean on A (Overlap = the planted half, known exactly), both true
inflations and their differences from it, with paired bootstrap 95% intervals (resampling stamps within
the planted and the other half). Each model is one training run (one seed): the run-to-run spread of
the models themselves is not in these intervals. As a detector check, phash finds the unplanted stamps
that are near-duplicates of a planted one (Tux Paint ships variants such as frog.png / frog-1.png): the
audit with Overlap = planted + those is reported too.

    python benchmarks/smallclip_experiment.py --baseline RUN_B --work DIR [--steps 600] [--threads 1]
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/smallclip_experiment.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.smallclip_experiment", *sys.argv[1:]])

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.common import cache_dir, fetch_deb


def cached_pairs(path: Path, sources: list[str], image_size: int, caption_from: str):
    from overlap_audit.training.smallclip import Pairs, load_pairs

    if path.exists():
        d = np.load(path)
        return Pairs([str(v) for v in d["ids"]], [str(v) for v in d["captions"]], d["images"])
    pairs = load_pairs(sources, image_size, caption_from=caption_from, workers=1)
    np.savez(path, ids=np.array(pairs.ids), captions=np.array(pairs.captions), images=pairs.images)
    return pairs


def stratified_half(labels: list[str], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    planted = np.zeros(len(labels), bool)
    lab = np.array(labels)
    for c in sorted(set(labels)):
        idx = np.flatnonzero(lab == c)
        rng.shuffle(idx)
        planted[idx[: len(idx) // 2 + (len(idx) % 2) * int(rng.random() < 0.5)]] = True
    return planted


def bootstrap(fn, groups: list[np.ndarray], n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of fn(index array) resampling within each group."""
    rng = np.random.default_rng(seed)
    vals = [fn(np.concatenate([rng.choice(g, len(g)) for g in groups])) for _ in range(n_boot)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def pipeline_audit(work: Path, oc_dir: str, tux_dir: str, rel: list[str], planted: np.ndarray,
                   correct: np.ndarray) -> dict:
    """The audit as a user runs it, on model A: phash index of A's corpus (openclipart + the planted stamps'
    original files), the evaluation stamps as an ImageFolder, A's zero-shot correctness as predictions."""
    import shutil

    import pyarrow.parquet as pq

    from overlap_audit.api import ReportSettings, build_index, run_report
    from overlap_audit.settings import IndexSettings, MatchSettings

    planted_dir, eval_dir = work / "corpus-planted", work / "eval-tuxpaint"
    for root, keep in ((planted_dir, planted), (eval_dir, np.ones(len(rel), bool))):
        if root.exists():
            shutil.rmtree(root)
        for r, k in zip(rel, keep):
            if k:
                (root / r).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(tux_dir) / r, root / r)
    index_dir, report_dir = work / "index-A", work / "report-A"
    shutil.rmtree(index_dir, ignore_errors=True)
    t0 = time.time()
    build_index([oc_dir, str(planted_dir)], index_dir, IndexSettings(detector="phash", workers=1, device="cpu"))
    preds = work / "predictions-A.csv"
    preds.write_text("dataset,id,correct\n" + "".join(f"tuxpaint,{r},{int(c)}\n" for r, c in zip(rel, correct)))
    rep = run_report(index_dir, [("tuxpaint", str(eval_dir))],
                     ReportSettings(report_dir, predictions=preds, match=MatchSettings(workers=1, device="cpu")))
    rows = pq.read_table(report_dir / "splits.parquet", columns=["id", "overlap"]).to_pylist()
    found = {r["id"] for r in rows if r["overlap"]}
    truth = {r for r, k in zip(rel, planted) if k}
    st = rep.datasets[0].stats
    return {"seconds": round(time.time() - t0, 1), "n": st.n_all, "n_overlap": st.n_overlap,
            "acc_all": st.acc_all, "acc_overlap": st.acc_overlap, "acc_clean": st.acc_clean,
            "all_minus_clean": st.delta, "ci_delta_paper_995": st.ci_delta, "p_value": st.p_value,
            "planted_found": len(found & truth), "planted": len(truth), "unplanted_called_overlap": len(found - truth)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True, help="run directory of model B (trained here if absent)")
    ap.add_argument("--work", required=True, help="folder for model A's run and cached thumbnails")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=4000)
    ap.add_argument("--cache", default=None, help="download cache (default: ~/.cache/overlap-audit, or under "
                                                  "$XDG_CACHE_HOME)")
    ap.add_argument("--openclipart", default=None)
    ap.add_argument("--tuxpaint", default=None)
    ap.add_argument("--no-audit", action="store_true",
                    help="skip the end-to-end audit (phash index of A's corpus, report on A's predictions)")
    ap.add_argument("--train-only", choices=["A", "B", "C"], default=None,
                    help="train (or finish) just this model and stop, e.g. to run A and B side by side")
    args = ap.parse_args()

    from overlap_audit.detectors import get_detector
    from overlap_audit.training.smallclip import Pairs, caption_from_path, pretrain
    from overlap_audit.zeroshot.smallclip import load, zero_shot
    from overlap_audit.settings import PretrainConfig
    from overlap_audit.zeroshot.smallclip_net import SmallClipNetConfig
    from overlap_audit.stats.overlap import overlap_stats

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = cache_dir(args.cache)
    oc_dir = args.openclipart or str(fetch_deb("openclipart-png", cache, "usr/share/openclipart/png"))
    tux_dir = args.tuxpaint or str(fetch_deb("tuxpaint-stamps-default", cache, "usr/share/tuxpaint/stamps"))
    mcfg = SmallClipNetConfig()
    # the same settings as the shipped model's `pretrain-clip` run, so a finished baseline is reused
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, seed=0, caption_from="auto")
    oc = cached_pairs(work / "openclipart.npz", [oc_dir], mcfg.image_size, "auto")
    # the stamps that have a caption file (11 of the 796 have none and are left out)
    tux = cached_pairs(work / "tuxpaint.npz", [tux_dir], mcfg.image_size, "caption")
    rel = [i.split(":", 1)[1] for i in tux.ids]
    labels = [r.split("/")[0] for r in rel]
    planted = stratified_half(labels, args.split_seed)
    idx = np.flatnonzero(planted)
    plant = Pairs([f"planted:{rel[i]}" for i in idx], [caption_from_path(rel[i]) for i in idx], tux.images[idx])
    cidx = np.flatnonzero(~planted)
    swap = Pairs([f"planted:{rel[i]}" for i in cidx], [caption_from_path(rel[i]) for i in cidx], tux.images[cidx])

    timings = {}
    for name, out, sources, pairs in (("B", Path(args.baseline), [oc_dir], oc),
                                      ("A", work / "A", [oc_dir, "tuxpaint-planted-half"], oc + plant),
                                      ("C", work / "C", [oc_dir, "tuxpaint-other-half"], oc + swap)):
        if args.train_only not in (None, name):
            continue
        t0 = time.time()
        r = pretrain(sources, out, cfg, mcfg, device="cpu", resume=True, threads=args.threads, pairs=pairs)
        timings[name] = {"pairs": r.n_pairs, "loss": r.loss, "seconds_this_call": round(time.time() - t0, 1),
                         "resumed_from": r.resumed_from,
                         "train_seconds": json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["seconds"]}
        print(name, timings[name], flush=True)
    if args.train_only:
        return

    import torch

    torch.set_num_threads(args.threads)
    correct = {}
    for name, out in (("A", work / "A"), ("B", Path(args.baseline)), ("C", work / "C")):
        correct[name] = zero_shot(load(out), tux.images, labels, ids=tux.ids).correct

    # phash: clean stamps whose nearest planted stamp is a near-duplicate (variants of one drawing)
    from PIL import Image

    det = get_detector("phash")
    hashes = det.embed_images([Image.fromarray(a.transpose(1, 2, 0)) for a in tux.images])
    sim = det.similarity(hashes, hashes[idx])
    leaked = (~planted) & (sim.max(axis=1) >= det.default_threshold)

    A, B, Cm = correct["A"].astype(float), correct["B"].astype(float), correct["C"].astype(float)
    P, C = np.flatnonzero(planted), np.flatnonzero(~planted)
    n = len(labels)

    def m(x, sel):
        return float(x[sel].mean())

    def audit(sel):  # All − Clean on A within the resampled indices
        return float(A[sel].mean() - A[sel][~planted[sel]].mean())

    def true_infl(sel):
        return float(A[sel].mean() - B[sel].mean())


    def dup_infl(sel):
        """acc_A(All) minus the counterfactual: each stamp scored by a model that saw as much Tux Paint as A
        but not that stamp (C on the planted half, A itself on the other half)."""
        p, c = sel[planted[sel]], sel[~planted[sel]]
        return float(A[sel].mean() - (Cm[p].sum() + A[c].sum()) / len(sel))

    res = {
        "n": n, "n_planted": int(planted.sum()), "n_clean": int((~planted).sum()),
        "n_clean_phash_near_duplicate_of_planted": int(leaked.sum()),
        "acc": {k: {"all": m(v, slice(None)), "overlap": m(v, P), "clean": m(v, C)} for k, v in (("A", A), ("B", B))},
        "audit_estimate_all_minus_clean_A": m(A, slice(None)) - m(A, C),
        "true_inflation_A_minus_B_all": m(A, slice(None)) - m(B, slice(None)),
        "clean_gain_A_minus_B": m(A, C) - m(B, C),
        "overlap_gain_A_minus_B": m(A, P) - m(B, P),
        "ci95": {
            "audit_estimate": bootstrap(audit, [P, C], args.n_boot, 1),
            "true_inflation": bootstrap(true_infl, [P, C], args.n_boot, 2),
            "true_minus_audit": bootstrap(lambda s: true_infl(s) - audit(s), [P, C], args.n_boot, 3),
            "clean_gain": bootstrap(lambda s: float(A[s].mean() - B[s].mean()), [C], args.n_boot, 4),
            "overlap_gain": bootstrap(lambda s: float(A[s].mean() - B[s].mean()), [P], args.n_boot, 5),
            "duplicate_inflation_A_vs_C": bootstrap(dup_infl, [P, C], args.n_boot, 6),
            "dup_minus_audit": bootstrap(lambda s: dup_infl(s) - audit(s), [P, C], args.n_boot, 7),
        },
        "acc_C": {"all": m(Cm, slice(None)), "planted_half_unseen_by_C": m(Cm, P), "other_half_seen_by_C": m(Cm, C)},
        "duplicate_inflation_A_vs_C": dup_infl(np.arange(n)),
        "duplicate_inflation_C_vs_A": float(Cm.mean() - (A[C].sum() + Cm[P].sum()) / n),
        "audit_estimate_all_minus_clean_C": float(Cm.mean() - Cm[P].mean()),
        "audit_paper_stats_A_known_split": overlap_stats(int(A.sum()), n, int(A[P].sum()), len(P)).to_dict(),
    }
    ov2 = planted | leaked
    res["audit_with_phash_leaks"] = {
        "n_overlap": int(ov2.sum()), "acc_A_clean_strict": m(A, np.flatnonzero(~ov2)),
        "audit_estimate": m(A, slice(None)) - m(A, np.flatnonzero(~ov2)),
        "acc_A_leaked": m(A, np.flatnonzero(leaked)) if leaked.any() else None,
        "acc_B_leaked": m(B, np.flatnonzero(leaked)) if leaked.any() else None,
    }
    if not args.no_audit:
        res["pipeline_audit_A"] = pipeline_audit(work, oc_dir, tux_dir, rel, planted, A)
    res["runs"] = timings
    res["settings"] = {"steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
                       "split_seed": args.split_seed, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "command": " ".join(sys.argv)}
    (work / "experiment.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
