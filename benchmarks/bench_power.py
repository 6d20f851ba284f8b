"""Calibration of the overlap tests by simulation: type-I error under the null, and power.

For each cell of a grid of (n_overlap, n_clean, accuracy), k_overlap and k_clean are drawn independently
with the same accuracy (null) or with Overlap 20 points better (alternative), and each test is applied
at alpha = 0.05. The paper's test takes the estimated Clean accuracy as known; the two-sample test is
Boschloo's exact test (Fisher's where the table space exceeds --boschloo-max, to keep the run short —
both are exact level-alpha tests, and the report itself uses Boschloo up to 250,000 tables).

    python benchmarks/calibration.py [--n-sim 4000] [--boschloo-max 2500]
"""

from __future__ import annotations

import argparse
import math
import time

from overlap_audit.stats.power import simulate, simulate_family


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-sim", type=int, default=4000)
    ap.add_argument("--boschloo-max", type=int, default=2500)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    se = math.sqrt(args.alpha * 0.95 / args.n_sim)
    t0 = time.time()
    print(f"# type-I error at alpha = {args.alpha} (null: equal accuracy), {args.n_sim} simulations per cell, "
          f"Monte Carlo s.e. {se:.4f}; cells marked ! exceed alpha + 3 s.e.")
    print("| n_overlap | n_clean | accuracy | paper's test | two-sample test (method) | power paper (+20 pts) "
          "| power two-sample (+20 pts) |")
    print("|---|---|---|---|---|---|---|")
    for n_ov in (10, 50, 200):
        for n_cl in (5, 20, 100, 1000):
            for acc in (0.5, 0.75):
                null = simulate(n_ov, n_cl, acc, alpha=args.alpha, n_sim=args.n_sim, seed=1,
                                boschloo_max_tables=args.boschloo_max)
                alt = simulate(n_ov, n_cl, acc, acc + 0.2, alpha=args.alpha, n_sim=args.n_sim, seed=2,
                               boschloo_max_tables=args.boschloo_max)

                def mark(rate: float) -> str:
                    return f"{rate:.3f}{' !' if rate > args.alpha + 3 * se else ''}"

                print(f"| {n_ov} | {n_cl} | {acc} | {mark(null.rejection_paper)} "
                      f"| {mark(null.rejection_two_sample)} ({null.two_sample_method}) "
                      f"| {alt.rejection_paper:.3f} | {alt.rejection_two_sample:.3f} |")
    fam_settings = [(10, 5, 0.5), (50, 20, 0.75), (200, 100, 0.5), (50, 1000, 0.75), (200, 20, 0.75)]
    fam = simulate_family(fam_settings, alpha=args.alpha, n_sim=args.n_sim // 4, seed=3,
                          boschloo_max_tables=args.boschloo_max)
    print(f"\n# family-wise error across {len(fam_settings)} null datasets {fam_settings}, {fam.n_sim} simulations")
    print("| test + correction | family-wise error |")
    print("|---|---|")
    for key, rate in fam.rejection.items():
        print(f"| {key} | {rate:.3f} |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
