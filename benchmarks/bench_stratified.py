"""The pooled against the class-stratified comparison, on simulated sets whose truth is known.

Each simulated evaluation set has J classes of m examples; class j's accuracy p_j runs evenly from 0.30 to
0.95 (logit scale), and each of its examples is in Overlap with probability q_j. Two knobs:

- confound γ: q_j ∝ exp(γ · z_j), z_j the standardised logit of p_j, scaled so the mean overlap rate is r.
  γ > 0 puts Overlap in the easy classes; γ = 0 spreads it evenly.
- memorisation β: an Overlap example is correct with probability logit⁻¹(logit p_j + β), a Clean one with p_j.
  β = 0: no memorisation, so any pooled gap is class mix alone.

The counts are drawn directly per class (n1_j ~ Binomial(m, q_j), then the correct counts), and every test
runs one-sided ("Overlap more accurate") at alpha: the paper's binomial test (Clean's accuracy as known),
the pooled two-sample test (Fisher's exact test: ``stats.two_sample_test`` with Boschloo disabled, to keep
the run short), and the within-class ones of ``overlap_audit.stats.stratified`` (the CMH test alone, and the
report's rule: exact conditional where cheap or where Mantel–Fleiss fails, CMH otherwise). Under β = 0 the
rejection rate is the false-positive rate; under β > 0 it is the power. The table also gives the true
inflation of All (Σ n1_j (p'_j − p_j) / n, known in the simulation), the mean of the pooled All − Clean and of
the stratified estimate, and how often the stratified estimate's 99.5% interval covers the true value.

    python benchmarks/bench_stratified.py [--n-sim 1000] [--alpha 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit
from scipy.stats import binom

from overlap_audit.stats.overlap import newcombe, two_sample_test
from overlap_audit.stats.strata import StrataCounts
from overlap_audit.stats.stratified import compare_within_classes


@dataclass(frozen=True)
class Setting:
    name: str
    classes: int
    per_class: int
    overlap_rate: float


SETTINGS = (
    Setting("10 × 50, 10% overlap", 10, 50, 0.10),
    Setting("100 × 100, 3% overlap", 100, 100, 0.03),
    Setting("1000 × 10, 5% overlap", 1000, 10, 0.05),
)


def class_rates(s: Setting, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, overlap probability) of each class."""
    lg = np.linspace(logit(0.30), logit(0.95), s.classes)
    acc = expit(lg)
    z = (lg - lg.mean()) / lg.std()
    w = np.exp(gamma * z)
    q = np.clip(s.overlap_rate * w / w.mean(), 0.0, 1.0)
    return acc, q


def draw(rng: np.random.Generator, s: Setting, gamma: float, beta: float):
    acc, q = class_rates(s, gamma)
    n1 = rng.binomial(s.per_class, q)
    n0 = s.per_class - n1
    boosted = expit(logit(acc) + beta)
    a = rng.binomial(n1, boosted)
    c = rng.binomial(n0, acc)
    true_inflation = float(np.sum(n1 * (boosted - acc)) / (s.classes * s.per_class))
    return a, n1, c, n0, true_inflation


def run_cell(s: Setting, gamma: float, beta: float, alpha: float, n_sim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = tuple(f"c{j:04d}" for j in range(s.classes))
    n = s.classes * s.per_class
    rej = {"paper": 0, "fisher": 0, "cmh": 0, "stratified": 0}
    methods = {"exact": 0, "cmh": 0}
    truth, pooled, strat, covered, counted = [], [], [], 0, 0
    pooled_covered, pooled_counted, pooled_err, strat_err = 0, 0, [], []
    for _ in range(n_sim):
        a, n1, c, n0, true_inf = draw(rng, s, gamma, beta)
        k_ov, n_ov, k_cl = int(a.sum()), int(n1.sum()), int(c.sum())
        n_cl = n - n_ov
        # the paper's test and All − Clean as in stats.overlap_stats, without its intervals (most of its time)
        p_paper = float(binom.sf(k_ov - 1, n_ov, k_cl / n_cl)) if n_ov and n_cl else None
        delta = (k_ov + k_cl) / n - k_cl / n_cl if n_cl else np.nan
        p_fisher = two_sample_test(k_ov, n_ov, k_cl, n_cl, boschloo_max_tables=0).p_value
        counts = StrataCounts(labels, n1, n0, a, c, n, 0, 0)
        cmp = compare_within_classes(counts)
        for key, p in (("paper", p_paper), ("fisher", p_fisher), ("stratified", cmp.p_value),
                       ("cmh", cmp.cmh.p_greater if cmp.cmh is not None else None)):
            rej[key] += bool(p is not None and p <= alpha)
        if cmp.method:
            methods[cmp.method] += 1
        truth.append(true_inf)
        pooled.append(delta)
        gap_ci = newcombe(k_ov, n_ov, k_cl, n_cl, 0.995)
        if gap_ci is not None:  # the report's pooled interval for All − Clean: the overlap rate × Newcombe's
            rate_ov = n_ov / n
            pooled_covered += rate_ov * gap_ci[0] <= true_inf <= rate_ov * gap_ci[1]
            pooled_counted += 1
            pooled_err.append(delta - true_inf)
        if cmp.inflation is not None:
            strat.append(cmp.inflation)
            covered += cmp.ci_inflation[0] <= true_inf <= cmp.ci_inflation[1]
            counted += 1
            strat_err.append(cmp.inflation - true_inf)
    return {
        "rej": {k: v / n_sim for k, v in rej.items()},
        "method": max(methods, key=methods.get) if any(methods.values()) else "-",
        "truth": float(np.mean(truth)), "pooled": float(np.nanmean(pooled)),
        "strat": float(np.mean(strat)) if strat else float("nan"),
        "coverage": covered / counted if counted else float("nan"),
        "pooled_coverage": pooled_covered / pooled_counted if pooled_counted else float("nan"),
        "pooled_rmse": float(np.sqrt(np.mean(np.square(pooled_err)))) if pooled_err else float("nan"),
        "strat_rmse": float(np.sqrt(np.mean(np.square(strat_err)))) if strat_err else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-sim", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    se = math.sqrt(args.alpha * (1 - args.alpha) / args.n_sim)
    t0 = time.time()
    cells = [(0.0, 0.0, "null, no confound"), (1.0, 0.0, "pure class confound"),
             (0.0, 0.4, "memorisation, no confound"), (1.0, 0.4, "memorisation + confound"),
             (-1.0, 0.4, "memorisation + confound against")]
    print(f"# one-sided tests at alpha = {args.alpha}, {args.n_sim} simulated sets per row, seed {args.seed}; "
          f"Monte Carlo s.e. of a rate of alpha {se:.4f}; ! marks a false-positive rate above alpha + 3 s.e.")
    print("# rates are false positives where β = 0 and power where β > 0; points are percentage points of All")
    print("| classes × per class, overlap | scenario (γ, β) | paper's test | pooled Fisher | CMH | stratified "
          "(mostly) | true inflation | pooled All − Clean | stratified inflation | 99.5% coverage |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    errors = []
    for i, s in enumerate(SETTINGS):
        for j, (gamma, beta, what) in enumerate(cells):
            r = run_cell(s, gamma, beta, args.alpha, args.n_sim, args.seed + 100 * i + j)
            errors.append((s, gamma, beta, what, r))

            def rate(key: str) -> str:
                v = r["rej"][key]
                return f"{v:.3f}{' !' if beta == 0 and v > args.alpha + 3 * se else ''}"

            print(f"| {s.name} | {what} ({gamma:g}, {beta:g}) | {rate('paper')} | {rate('fisher')} | {rate('cmh')} "
                  f"| {rate('stratified')} ({r['method']}) | {100 * r['truth']:+.2f} | {100 * r['pooled']:+.2f} "
                  f"| {100 * r['strat']:+.2f} | {r['coverage']:.3f} |")
    print("\n# side by side, the known truth: the wrong conclusion is a rejection where β = 0 (false positive) and "
          "no rejection where β > 0 (miss); the interval errs when its 99.5% interval misses the true inflation "
          "(pooled: overlap rate × Newcombe's interval of Overlap − Clean, as in the report); RMSE of the estimate "
          "against the true inflation, in points of All")
    print("| classes × per class, overlap | scenario (γ, β) | wrong conclusion: pooled Fisher / stratified "
          "| interval misses the truth: pooled / stratified | RMSE: pooled All − Clean / stratified |")
    print("|---|---|---|---|---|")
    for s, gamma, beta, what, r in errors:
        wrong = {k: (r["rej"][k] if beta == 0 else 1 - r["rej"][k]) for k in ("fisher", "stratified")}
        print(f"| {s.name} | {what} ({gamma:g}, {beta:g}) | {wrong['fisher']:.3f} / {wrong['stratified']:.3f} "
              f"| {1 - r['pooled_coverage']:.3f} / {1 - r['coverage']:.3f} "
              f"| {100 * r['pooled_rmse']:.2f} / {100 * r['strat_rmse']:.2f} |")
    print(f"\n({time.time() - t0:.0f} s; {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()})")


if __name__ == "__main__":
    main()
