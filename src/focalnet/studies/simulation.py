"""The rounds' procedure on simulated studies (focalnet.studies.sequential): per-seed paired differences drawn with a
known Δ and sd, every wrong verdict counted; and docs/sequential.md's tables (`python -m focalnet.studies.simulation
--doc`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from focalnet.studies.sequential import (
    BOUNDS_FILE,
    PROCEDURES,
    VERDICTS,
    Design,
    draws,
    replication_seeds,
    write_bounds,
)


def verdicts(diffs: np.ndarray, design: Design) -> tuple[np.ndarray, np.ndarray]:
    """`decide` for many rows at once, each given its paired differences up to the cap (shape (rows, cap)) and
    looked at round by round until decided: each row's verdict (an index into VERDICTS) and the pairs it used."""
    verdict = np.full(len(diffs), -1)
    used = np.zeros(len(diffs), dtype=int)
    for n in design.looks:
        d = diffs[:, :n]
        mean, sd = d.mean(axis=1), d.std(axis=1, ddof=1)
        half, eq_half = design.bound(n) * sd / math.sqrt(n), design.eq_bound(n) * sd / math.sqrt(n)
        now = np.select([mean - half > 0, mean + half < 0,
                         (-design.delta < mean - eq_half) & (mean + eq_half < design.delta)], [0, 1, 2], -1)
        if n == design.max_seeds:
            now[now < 0] = 3
        fresh = (verdict < 0) & (now >= 0)
        verdict[fresh], used[fresh] = now[fresh], n
    return verdict, used


def simulate(design: Design, true_delta: float | Sequence[float], sd: float, studies: int = 2000, seed: int = 0,
             noise: str = "normal") -> dict:
    """Run `studies` simulated studies of design.rows rows, each row's paired differences drawn with mean
    `true_delta` (one value, or one per row) and standard deviation `sd` (noise "normal", "t3" or "skew<g>", see
    `draws`). Returns the share of studies with any wrong verdict ("familywise_error": "better" where Δ <= 0,
    "worse" where Δ >= 0, "equivalent" where |Δ| >= δ), the share of rows per verdict, and the mean pairs per row."""
    rng = np.random.default_rng(seed)
    truth = np.broadcast_to(np.asarray(true_delta, dtype=float), (design.rows,))
    diffs = truth[None, :, None] + sd * draws(rng, noise, (studies, design.rows, design.max_seeds))
    verdict, used = verdicts(diffs.reshape(-1, design.max_seeds), design)
    verdict = verdict.reshape(studies, design.rows)
    wrong = (((verdict == 0) & (truth <= 0)) | ((verdict == 1) & (truth >= 0))
             | ((verdict == 2) & (np.abs(truth) >= design.delta)))
    return {"familywise_error": float(wrong.any(axis=1).mean()),
            **{v: float((verdict == i).mean()) for i, v in enumerate(VERDICTS)}, "mean_pairs": float(used.mean())}


def _row(cells: Sequence) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def doc_tables(seed: int = 1) -> str:
    """docs/sequential.md's tables, from simulated studies drawn from `seed` (the same draws for both procedures):
    `python -m focalnet.studies.simulation --doc`."""
    studies = {1: 100_000, 4: 25_000, 10: 10_000}
    worst = 1000.0  # sd so large that no row can be equivalent: every row goes to the cap unless it errs
    out = ["### Normal differences", "",
           f"{studies[1]:,} studies for 1 row, {studies[4]:,} for 4 rows; δ = 0.5, α = 0.05, 3 seeds a round, cap 10. "
           "*Wrong (Δ = 0)*: the share of studies with any wrong verdict when no row differs; *better (Δ = 0.5)*: "
           "the share of rows called better when every row is 0.5 points better; *equivalent (Δ = 0)*: rows called "
           "equivalent when none differs; *seeds*: mean pairs per row at Δ = 0 and at Δ = 0.5.", "",
           _row(["rows", "sd (pts)", "procedure", "wrong (Δ = 0)", "better (Δ = 0.5)", "equivalent (Δ = 0)",
                 "seeds (Δ = 0)", "seeds (Δ = 0.5)"]), "|---|---|---|---|---|---|---|---|"]
    for rows in (1, 4):
        for sd in (0.3, 0.5, worst):
            for procedure in PROCEDURES:
                design = Design(rows=rows, procedure=procedure)
                null = simulate(design, 0.0, sd, studies[rows], seed)
                half = simulate(design, 0.5, sd, studies[rows], seed)
                out.append(_row([rows, "worst case" if sd == worst else f"{sd:g}", procedure, null["familywise_error"],
                                 half["better"], null["equivalent"], f"{null['mean_pairs']:.1f}",
                                 f"{half['mean_pairs']:.1f}"]))
    sds = (0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)
    out += ["", "### Skewed and heavy-tailed differences", "",
            f"The share of studies with any wrong verdict ({studies[1]:,} / {studies[4]:,} / {studies[10]:,} studies "
            "for 1 / 4 / 10 rows): *Δ = 0, worst case* with sd 1000 (no row can stop for equivalence); *Δ = δ* with "
            "every row at +δ, the largest over sd " + ", ".join(f"{s:g}" for s in sds) + " (at the sd named). "
            "skew0.5 and skew1: standardized gamma differences of skewness +0.5 and +1 (at +δ the heavy tail is "
            "the one that errs); t3: Student t with 3 degrees of freedom.", "",
            _row(["rows", "cap", "noise", "procedure", "wrong (Δ = 0, worst case)", "wrong (Δ = δ, worst sd)"]),
            "|---|---|---|---|---|---|"]
    for rows, cap in ((1, 10), (4, 10), (10, 10), (10, 20)):
        for noise in ("normal", "skew0.5", "skew1", "t3"):
            for procedure in PROCEDURES:
                design = Design(rows=rows, max_seeds=cap, procedure=procedure)
                null = simulate(design, 0.0, worst, studies[rows], seed, noise)["familywise_error"]
                margin = [(simulate(design, design.delta, s, studies[rows], seed, noise)["familywise_error"], s)
                          for s in sds]
                rate, at = max(margin)
                out.append(_row([rows, cap, noise, procedure, null, f"{rate:.3f} (sd {at:g})"]))
    out += ["", "### Seeds a fresh fixed-n replication needs for 80% power (sd 0.5 points)", "",
            "`replication_seeds(Δ, 0.5, Design(rows=K))`: a paired t-test two-sided at α/K for a true difference "
            "Δ, and a TOST within ±0.5 points (one-sided tests at α/K) for a true difference Δ.", "",
            _row(["true Δ (pts)", "difference, K = 1", "K = 4", "K = 10", "equivalence, K = 1", "K = 4", "K = 10"]),
            "|---|---|---|---|---|---|---|"]
    for delta in (0.0, 0.1, 0.2, 0.3, 0.5):
        need = [replication_seeds(delta, 0.5, Design(rows=k)) for k in (1, 4, 10)]
        out.append(_row([f"{delta:g}"] + [n["difference"] or "-" for n in need]
                        + [n["equivalence"] or "-" for n in need]))
    out += ["", "### The calibrated critical values (α = 0.05, 3 seeds a round)", "",
            _row(["rows", "cap", "looks", "c_n", "c^eq_n", "level spent under normal differences (two-sided, "
                  "equivalence)", "bonferroni c_n"]), "|---|---|---|---|---|---|---|"]
    for rows, cap in ((1, 10), (4, 10), (10, 10), (1, 20), (4, 20), (10, 20)):
        design = Design(rows=rows, max_seeds=cap, procedure="obf")
        bonferroni = dataclasses.replace(design, procedure="bonferroni")
        fmt = lambda cs: ", ".join(f"{c:.2f}" if c < 100 else f"{c:.3g}" for c in cs)  # noqa: E731
        out.append(_row([rows, cap, ", ".join(map(str, design.looks)), fmt(map(design.bound, design.looks)),
                         fmt(map(design.eq_bound, design.looks)),
                         f"{design.calibration(False)['nominal']:.4f}, {design.calibration(True)['nominal']:.4f} "
                         f"of {design.alpha / rows:.4f}", fmt(map(bonferroni.bound, design.looks))]))
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    """`python -m focalnet.studies.simulation [--rows K ...]`: the design's operating characteristics on simulated
    studies: the family-wise rate of wrong verdicts and how often each verdict comes, for a few
    true differences and sds. `--doc`: docs/sequential.md's tables; `--calibrate`: rewrite sequential_bounds.json."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m focalnet.studies.simulation",
                                     description=main.__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--procedure", choices=PROCEDURES, default="bonferroni")
    parser.add_argument("--doc", action="store_true", help="print docs/sequential.md's tables")
    parser.add_argument("--calibrate", action="store_true", help=f"rewrite {BOUNDS_FILE.name} (a minute or two)")
    args = parser.parse_args(argv)

    if args.calibrate:
        write_bounds()
        return
    if args.doc:
        print(doc_tables(), end="")
        return
    scenarios = [(0.0, 0.3, "normal"), (0.0, 0.3, "t3"), (0.5, 0.3, "normal"), (0.3, 0.3, "normal"),
                 (1.0, 0.35, "normal")]
    print("| rows | true Δ (pts) | sd (pts) | noise | wrong verdict (any row) | better | worse | equivalent | "
          "inconclusive | mean seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        for seed, (delta, sd, noise) in enumerate(scenarios):
            r = simulate(Design(rows=rows, procedure=args.procedure), delta, sd, args.studies, seed=seed, noise=noise)
            print(f"| {rows} | {delta:g} | {sd:g} | {noise} | {r['familywise_error']:.3f} | {r['better']:.3f} | "
                  f"{r['worse']:.3f} | {r['equivalent']:.3f} | {r['inconclusive']:.3f} | {r['mean_pairs']:.1f} |")


if __name__ == "__main__":
    main()
