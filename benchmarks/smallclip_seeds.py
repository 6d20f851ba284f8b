"""The controlled All − Clean experiment over several training seeds, on development data.

Evaluation set: openclipart-png drawings held out of the pretraining corpus, ``--per-class`` from each of
the larger top-level categories (the category is the class; chosen with ``--split-seed``). A stratified
random half of them (fixed by ``--split-seed``) is planted: model A is pretrained on the rest of
openclipart plus the planted half, model C on the rest plus the other half; each with its path caption
("frog, animals": the label word travels with the image). For every training seed, A and C are trained
with that seed (same architecture, steps, batch), both scored zero-shot (the 80 templates) on the whole
evaluation set, and reported:

- the audit's estimate on A: All − Clean, Overlap = the planted half (known exactly);
- the duplicates' own inflation: acc_A(All) − (C on the planted half, A on the other half), i.e. against
  a model that saw as much of the set but not the example itself;
- their difference, each with a paired bootstrap 95% interval over evaluation examples (resampling within
  the planted and the other half): the bootstrap is the spread from the evaluation sample for one trained
  pair of models; the spread over seeds is the spread from training.

Each seed's numbers go to ``DIR/seeds.json`` as soon as they are measured, so a cut-short run keeps
what it finished.

    python benchmarks/smallclip_seeds.py --work DIR [--seeds 0 1 2 3 4] [--steps 600] [--threads 1]
    python benchmarks/smallclip_seeds.py --work DIR --table   # DIR/seeds.json as BENCHMARKS.md's table
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # python benchmarks/smallclip_seeds.py: run as the module
    import os
    import sys

    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.smallclip_seeds", *sys.argv[1:]])

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
from benchmarks.smallclip_experiment import bootstrap, cached_pairs, stratified_half

# categories whose names are words a caption can carry; "unsorted", "special" are not classes
CLASSES = ("animals", "buildings", "computer", "food", "geography", "office", "people", "plants", "recreation",
           "shapes", "signs_and_symbols", "tools", "transportation")


def choose_eval(ids: list[str], per_class: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Indices of the held-out evaluation drawings (``per_class`` of each class) and their labels."""
    rng = np.random.default_rng(seed)
    cats = np.array([i.split(":", 1)[1].split("/")[0] for i in ids])
    chosen = []
    for c in CLASSES:
        idx = np.flatnonzero(cats == c)
        chosen.extend(sorted(rng.choice(idx, min(per_class, len(idx)), replace=False).tolist()))
    chosen = np.array(chosen)
    return chosen, [str(cats[i]) for i in chosen]


def seed_result(A: np.ndarray, Cm: np.ndarray, planted: np.ndarray, n_boot: int) -> dict:
    """Audit estimate, the duplicates' own inflation and their difference for one trained pair (A, C)."""
    P, C = np.flatnonzero(planted), np.flatnonzero(~planted)

    def audit(sel):
        return float(A[sel].mean() - A[sel][~planted[sel]].mean())

    def dup(sel):
        p, c = sel[planted[sel]], sel[~planted[sel]]
        return float(A[sel].mean() - (Cm[p].sum() + A[c].sum()) / len(sel))

    every = np.arange(len(A))
    return {
        "acc_A": {"all": float(A.mean()), "planted": float(A[P].mean()), "other": float(A[C].mean())},
        "acc_C": {"all": float(Cm.mean()), "planted": float(Cm[P].mean()), "other": float(Cm[C].mean())},
        "audit_all_minus_clean": audit(every), "duplicate_inflation": dup(every),
        "dup_minus_audit": dup(every) - audit(every),
        "ci95_bootstrap": {"audit": bootstrap(audit, [P, C], n_boot, 1),
                           "duplicate_inflation": bootstrap(dup, [P, C], n_boot, 2),
                           "dup_minus_audit": bootstrap(lambda s: dup(s) - audit(s), [P, C], n_boot, 3)},
    }


def summary(per_seed: list[dict]) -> dict:
    out = {}
    for key in ("audit_all_minus_clean", "duplicate_inflation", "dup_minus_audit"):
        v = np.array([r[key] for r in per_seed])
        out[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                    "min": float(v.min()), "max": float(v.max())}
    return out


def mirror(r: dict) -> float:
    """The audit on C (Overlap = the other half, which C saw): C's All − Clean."""
    return r["acc_C"]["all"] - r["acc_C"]["planted"]


def both_ways(r: dict) -> float:
    """Each model's gain on the half it saw over the model that did not see it, averaged over A and C and
    scaled by the overlap rate (one half): a fixed planted half's own difficulty, and a model-wide offset
    between A and C, cancel. Also the mean of A's and C's audits."""
    gain = ((r["acc_A"]["planted"] - r["acc_C"]["planted"]) + (r["acc_C"]["other"] - r["acc_A"]["other"])) / 2
    return 0.5 * gain


def table(res: dict) -> str:
    """seeds.json as a markdown table: one row per seed, then the mean and sd over seeds (points)."""

    def pt(x):
        return f"{100 * x:+.1f}"

    def ci(v):
        return f"[{pt(v[0])}, {pt(v[1])}]"

    lines = ["| training seed | A: All / planted / other | C: All / planted / other | audit: All − Clean on A "
             "[95% bootstrap] | duplicates' own inflation [95% bootstrap] | own − audit [95% bootstrap] "
             "| mirror: All − Clean on C | both-ways inflation |",
             "|---|---|---|---|---|---|---|---|"]
    extra = {}
    for seed, r in sorted(res["per_seed"].items(), key=lambda kv: int(kv[0])):
        a, c, b = r["acc_A"], r["acc_C"], r["ci95_bootstrap"]
        lines.append(f"| {seed} | {100 * a['all']:.1f} / {100 * a['planted']:.1f} / {100 * a['other']:.1f} "
                     f"| {100 * c['all']:.1f} / {100 * c['planted']:.1f} / {100 * c['other']:.1f} "
                     f"| {pt(r['audit_all_minus_clean'])} {ci(b['audit'])} "
                     f"| {pt(r['duplicate_inflation'])} {ci(b['duplicate_inflation'])} "
                     f"| {pt(r['dup_minus_audit'])} {ci(b['dup_minus_audit'])} "
                     f"| {pt(mirror(r))} | {pt(both_ways(r))} |")
        extra.setdefault("mirror", []).append(mirror(r))
        extra.setdefault("both", []).append(both_ways(r))
    sm = summary(list(res["per_seed"].values()))

    def msd(key):
        sd = sm[key]["sd"]
        return f"{pt(sm[key]['mean'])} (sd {100 * sd:.1f})" if sd is not None else pt(sm[key]["mean"])

    def msd_of(v):
        return f"{pt(float(np.mean(v)))} (sd {100 * float(np.std(v, ddof=1)):.1f})" if len(v) > 1 else pt(v[0])

    lines.append(f"| mean (sd) over {len(res['per_seed'])} seeds | | | {msd('audit_all_minus_clean')} "
                 f"| {msd('duplicate_inflation')} | {msd('dup_minus_audit')} | {msd_of(extra['mirror'])} "
                 f"| {msd_of(extra['both'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--openclipart", default=None)
    ap.add_argument("--table", action="store_true", help="print DIR/seeds.json as a markdown table and stop")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads((Path(args.work) / "seeds.json").read_text())))
        return

    import torch

    from overlap_audit.settings import PretrainConfig
    from overlap_audit.training.smallclip import Pairs, pretrain
    from overlap_audit.zeroshot.smallclip import load, zero_shot
    from overlap_audit.zeroshot.smallclip_net import SmallClipNetConfig

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    oc_dir = args.openclipart or str(fetch_deb("openclipart-png", cache_dir(args.cache), "usr/share/openclipart/png"))
    mcfg = SmallClipNetConfig()
    oc = cached_pairs(work / "openclipart.npz", [oc_dir], mcfg.image_size, "auto")
    ev, labels = choose_eval(oc.ids, args.per_class, args.split_seed)
    in_eval = np.zeros(len(oc), bool)
    in_eval[ev] = True
    base_idx = np.flatnonzero(~in_eval)
    base = Pairs([oc.ids[i] for i in base_idx], [oc.captions[i] for i in base_idx], oc.images[base_idx])
    planted = stratified_half(labels, args.split_seed)

    def part(mask):
        sel = ev[mask]
        return Pairs([oc.ids[i] for i in sel], [oc.captions[i] for i in sel], oc.images[sel])

    images = oc.images[ev]
    classnames = [c.replace("_", " ") for c in CLASSES]
    out_path = work / "seeds.json"
    res = json.loads(out_path.read_text()) if out_path.exists() else {"per_seed": {}}
    res["settings"] = {"steps": args.steps, "batch_size": args.batch_size, "threads": args.threads,
                       "per_class": args.per_class, "split_seed": args.split_seed, "n_eval": int(len(ev)),
                       "n_planted": int(planted.sum()), "n_base": int(len(base)), "classes": list(CLASSES),
                       "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
                       "command": " ".join(sys.argv)}
    for seed in args.seeds:
        if str(seed) in res["per_seed"]:
            continue
        cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, seed=seed, caption_from="auto")
        correct, seconds = {}, {}
        for name, half in (("A", planted), ("C", ~planted)):
            run = work / f"seed{seed}-{name}"
            t0 = time.time()
            pretrain([oc_dir, f"openclipart-heldout-{name}"], run, cfg, mcfg, device="cpu", resume=True,
                     threads=args.threads, pairs=base + part(half))
            seconds[name] = round(time.time() - t0, 1)
            torch.set_num_threads(args.threads)
            correct[name] = zero_shot(load(run), images, labels, classes=list(CLASSES),
                                      classnames=classnames).correct.astype(float)
        r = seed_result(correct["A"], correct["C"], planted, args.n_boot)
        r["train_seconds"] = seconds
        r["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        res["per_seed"][str(seed)] = r
        res["summary"] = summary(list(res["per_seed"].values()))
        out_path.write_text(json.dumps(res, indent=2))
        print(seed, json.dumps(r), flush=True)
    print(json.dumps(res.get("summary"), indent=2))


if __name__ == "__main__":
    main()
