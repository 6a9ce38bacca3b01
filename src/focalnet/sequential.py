"""Studies that end with an answer: seeds are added in rounds until each row is decided, with error rates that hold.

A row compares one setting with the study's baseline, paired by seed: d_s = top-1(setting, seed s) - top-1(baseline,
seed s), in points. The study looks at the rows after every round of `seeds_per_round` seeds (n = 3, 6, 9, then the
cap 10), and at a look with n pairs each undecided row gets a *repeated confidence interval* (Jennison & Turnbull,
"Interim analyses: the repeated confidence interval approach", JRSS B 1989):

    mean(d) ± c_n · sd(d) / √n,   c_n = the t quantile (n - 1 degrees of freedom) at 1 - a_n / 2

Each look's two-sided level a_n is a share of α / K (K: the study's rows), in proportion to n - 2: the first look
(2 degrees of freedom, where a t-interval is some 10 standard deviations wide) costs almost nothing, the last ones
get the most. By the union bound over the looks and the rows (Bonferroni), every interval of every row at every
look covers its true difference at once with probability at least 1 - α, whatever the rows' dependence (they share
the baseline runs) and whatever made the study stop (a decision, the cap, the budget, a person). So the verdicts read
off those intervals err, all of them together, with probability at most α:

    better / worse   the interval lies above / below 0       (a wrong one needs an interval that misses Δ)
    equivalent       the interval lies inside ±δ             (likewise, when |Δ| >= δ)
    inconclusive     the cap or the budget came first        (no claim)

The guarantee assumes normal paired differences; `simulate` measures the rates on simulated studies (the tests, and
the README's table, do so for normal and heavy-tailed differences).

Why not a library: AdaStop (adaptive permutation tests with family-wise control) compares unpaired groups, and its
"equal" means "not rejected", not "within ±δ"; with sign-flip permutations of 3-10 pairs its smallest p-values
(1/8 at 3 pairs) cannot decide early. Confidence sequences (confseq, expectation) need bounded or sub-Gaussian
increments with a known scale: for differences in [-100, 100] points they stay tens of points wide at 10 seeds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

VERDICTS = ("better", "worse", "equivalent", "inconclusive")
PENDING = "pending"  # undecided, with more seeds due


@dataclass(frozen=True)
class Design:
    """A study's question: its margin δ (points), family-wise α over its `rows`, seeds per round and the cap."""

    rows: int = 1
    alpha: float = 0.05
    delta: float = 0.5
    seeds_per_round: int = 3
    max_seeds: int = 10

    def __post_init__(self) -> None:
        checks = {"rows": self.rows >= 1, "alpha": 0 < self.alpha < 1, "delta": self.delta > 0,
                  "seeds_per_round": self.seeds_per_round >= 1, "max_seeds": self.max_seeds >= 3}
        for key, ok in checks.items():
            if not ok:
                allowed = {"rows": ">= 1", "alpha": "in (0, 1)", "delta": "> 0", "seeds_per_round": ">= 1",
                           "max_seeds": ">= 3"}[key]
                raise ValueError(f"study.{key}={getattr(self, key)} must be {allowed}")

    @property
    def looks(self) -> list[int]:
        """The numbers of pairs at which rows are looked at: every round's end, then the cap (no look below 3)."""
        ns = list(range(self.seeds_per_round, self.max_seeds, self.seeds_per_round)) + [self.max_seeds]
        return [n for n in ns if n >= 3]

    def level(self, n: int) -> float:
        """The two-sided level a_n of the look at n pairs: α / rows shared in proportion to n - 2."""
        weights = {m: m - 2 for m in self.looks}
        return self.alpha / self.rows * weights[n] / sum(weights.values())

    def bound(self, n: int) -> float:
        """c_n: the interval at n pairs is mean ± c_n · sd / √n."""
        return _bound(self, n)

    def look_at(self, n: int) -> int | None:
        """The last look that n pairs reach (None below the first)."""
        reached = [m for m in self.looks if m <= n]
        return reached[-1] if reached else None

    def next_look(self, n: int) -> int | None:
        later = [m for m in self.looks if m > n]
        return later[0] if later else None


@functools.lru_cache(maxsize=4096)
def _bound(design: Design, n: int) -> float:
    return float(stats.t.ppf(1 - design.level(n) / 2, n - 1))


@dataclass(frozen=True)
class Decision:
    n: int                   # pairs used (the look's), 0 when below the first look
    delta: float | None      # mean paired difference (points)
    sd: float | None
    low: float | None
    high: float | None
    verdict: str             # one of VERDICTS, or PENDING
    why: str = ""            # for inconclusive: "cap" or "budget"


def decide(diffs: Sequence[float], design: Design, stopped: str | None = None) -> Decision:
    """The row's state after `diffs` (paired differences in seed order; the first look(n) of them are used).

    `stopped` ("budget") says no more seeds will come although the cap is not reached: an undecided row is then
    inconclusive, as it is at the cap."""
    n = design.look_at(len(diffs))
    if n is None:
        return Decision(0, None, None, None, None, "inconclusive" if stopped else PENDING, stopped or "")
    d = np.asarray(diffs[:n], dtype=float)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = design.bound(n) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if low > 0:
        verdict = "better"
    elif high < 0:
        verdict = "worse"
    elif -design.delta < low and high < design.delta:
        verdict = "equivalent"
    elif n >= design.max_seeds or stopped:
        return Decision(n, mean, sd, low, high, "inconclusive", "cap" if n >= design.max_seeds else stopped)
    else:
        verdict = PENDING
    return Decision(n, mean, sd, low, high, verdict)


def seeds_to_decide(mean: float, sd: float, design: Design, n: int = 0, limit: int = 1000) -> int | None:
    """How many pairs in all the observed mean and sd (over n pairs) say would decide the row: the first later look
    of the design whose interval would exclude 0 or fit inside ±δ, else the first cap beyond the design's that would
    (the same rounds, the cap raised); None beyond `limit`. An estimate: the next seeds will not repeat the mean and
    sd exactly."""
    if sd == 0:
        return max(n, design.looks[0])

    def decides(d: Design, m: int) -> bool:
        half = d.bound(m) * sd / math.sqrt(m)
        return half < abs(mean) or abs(mean) + half < d.delta

    for m in design.looks:
        if m > n and decides(design, m):
            return m
    for cap in range(design.max_seeds + 1, limit + 1):
        if decides(Design(design.rows, design.alpha, design.delta, design.seeds_per_round, cap), cap):
            return cap
    return None


def simulate(design: Design, true_delta: float | Sequence[float], sd: float, studies: int = 2000, seed: int = 0,
             noise: str = "normal") -> dict:
    """Run `studies` simulated studies of design.rows rows, each row's paired differences drawn with mean
    `true_delta` (one value, or one per row) and standard deviation `sd` (noise "normal", or "t3": Student t with 3
    degrees of freedom scaled to that sd). Returns the share of studies with any wrong better/worse verdict
    ("familywise_error"), the share of rows per verdict, and the mean pairs per row."""
    rng = np.random.default_rng(seed)
    truth = np.broadcast_to(np.asarray(true_delta, dtype=float), (design.rows,))
    shape = (studies, design.rows, design.max_seeds)
    if noise == "normal":
        z = rng.standard_normal(shape)
    elif noise == "t3":
        z = rng.standard_t(3, shape) / math.sqrt(3.0)  # unit variance
    else:
        raise ValueError(f"noise={noise!r} must be 'normal' or 't3'")
    diffs = truth[None, :, None] + sd * z
    counts = dict.fromkeys(VERDICTS, 0)
    wrong_studies, pairs = 0, 0
    for study in diffs:
        wrong = False
        for row, d in enumerate(study):
            for n in design.looks:  # the rounds: a decided row gets no more seeds
                decision = decide(d[:n], design)
                if decision.verdict != PENDING:
                    break
            counts[decision.verdict] += 1
            pairs += decision.n
            wrong |= (decision.verdict == "better" and truth[row] <= 0) or (decision.verdict == "worse"
                                                                           and truth[row] >= 0)
        wrong_studies += wrong
    rows = studies * design.rows
    return {"familywise_error": wrong_studies / studies, **{v: counts[v] / rows for v in VERDICTS},
            "mean_pairs": pairs / rows}


def main(argv=None) -> None:
    """`python -m focalnet.sequential [--rows K ...]`: the design's operating characteristics on simulated studies
    (what the README's table shows): the family-wise rate of wrong better/worse verdicts, and how often each verdict
    comes, for a few true differences and sds."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m focalnet.sequential", description=main.__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--studies", type=int, default=4000)
    args = parser.parse_args(argv)
    scenarios = [(0.0, 0.3, "normal"), (0.0, 0.3, "t3"), (0.5, 0.3, "normal"), (0.3, 0.3, "normal"),
                 (1.0, 0.35, "normal")]
    print("| rows | true Δ (pts) | sd (pts) | noise | wrong better/worse (any row) | better | worse | equivalent | "
          "inconclusive | mean seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        for seed, (delta, sd, noise) in enumerate(scenarios):
            r = simulate(Design(rows=rows), delta, sd, args.studies, seed=seed, noise=noise)
            print(f"| {rows} | {delta:g} | {sd:g} | {noise} | {r['familywise_error']:.3f} | {r['better']:.3f} | "
                  f"{r['worse']:.3f} | {r['equivalent']:.3f} | {r['inconclusive']:.3f} | {r['mean_pairs']:.1f} |")


if __name__ == "__main__":
    main()
