"""The rounds' procedure (focalnet.sequential) on simulated studies: per-seed paired differences drawn with a known
Δ and sd, seeded, no training."""

import math

import pytest
from scipy import stats

from focalnet.sequential import PENDING, Design, decide, seeds_to_decide, simulate


@pytest.mark.parametrize("rows", [1, 4])  # 4: the largest study (focal_levels)
def test_no_difference_anywhere_gives_a_wrong_verdict_in_at_most_alpha_of_the_studies(rows):
    design = Design(rows=rows)
    rates = simulate(design, 0.0, 0.3, studies=2000, seed=1)
    assert rates["familywise_error"] <= design.alpha
    # Without the equivalence stops every row goes to the cap and is looked at 4 times: the bound still holds.
    never_equivalent = Design(rows=rows, delta=1e-9)
    assert simulate(never_equivalent, 0.0, 0.3, studies=2000, seed=2)["familywise_error"] <= design.alpha
    # Heavy tails (Student t, 3 degrees of freedom): outside the normal assumption, measured.
    assert simulate(never_equivalent, 0.0, 0.3, studies=2000, seed=3, noise="t3")["familywise_error"] <= design.alpha


@pytest.mark.parametrize("rows", [1, 4])
def test_a_one_point_difference_is_found_within_the_cap(rows):
    rates = simulate(Design(rows=rows), 1.0, 0.35, studies=2000, seed=4)
    assert rates["better"] >= 0.8 and rates["worse"] == 0
    rates = simulate(Design(rows=rows), -1.0, 0.35, studies=2000, seed=5)
    assert rates["worse"] >= 0.8 and rates["better"] == 0


@pytest.mark.parametrize("rows", [1, 4])
def test_no_difference_is_called_equivalent_within_the_cap(rows):
    assert simulate(Design(rows=rows), 0.0, 0.3, studies=2000, seed=6)["equivalent"] >= 0.8


def test_a_difference_at_the_margin_is_rarely_called_equivalent():
    """The intervals' coverage protects the other claim too: Δ = δ is equivalent only when an interval misses Δ."""
    design = Design(rows=1)
    assert simulate(design, design.delta, 0.3, studies=2000, seed=7)["equivalent"] <= design.alpha


def test_the_looks_and_their_bounds():
    design = Design(rows=2)
    assert design.looks == [3, 6, 9, 10]
    assert sum(design.level(n) for n in design.looks) == pytest.approx(0.05 / 2)  # Bonferroni over looks and rows
    # By hand: the look at 10 pairs gets 8/20 of alpha/2; its bound is the t quantile with 9 degrees of freedom.
    assert design.bound(10) == pytest.approx(stats.t.ppf(1 - 0.025 * 8 / 20 / 2, 9))
    assert Design(seeds_per_round=4, max_seeds=10).looks == [4, 8, 10]
    assert Design(seeds_per_round=5, max_seeds=12).looks == [5, 10, 12]


def test_decide_reads_the_interval():
    design = Design(rows=1)
    c = design.bound(6)
    better = decide([1.0, 1.2, 0.8, 1.1, 0.9, 1.0], design)
    sd = stats.tstd([1.0, 1.2, 0.8, 1.1, 0.9, 1.0])
    assert (better.n, better.verdict) == (6, "better")
    assert better.low == pytest.approx(1.0 - c * sd / math.sqrt(6))
    assert decide([0.01, -0.02, 0.0, 0.02, -0.01, 0.0], design).verdict == "equivalent"
    assert decide([-1.0, -1.1, -0.9, -1.0, -1.05, -0.95], design).verdict == "worse"
    assert decide([1.0, -1.0, 0.5], design).verdict == PENDING
    assert decide([1.0, -1.0], design).n == 0  # below the first look: no interval
    capped = decide([1.0, -1.0, 0.5, 0.2, -0.3, 1.0, -1.0, 0.5, 0.2, -0.3], design)
    assert (capped.verdict, capped.why) == ("inconclusive", "cap")
    budget = decide([1.0, -1.0, 0.5, 0.2, -0.3, 1.0], design, stopped="budget")
    assert (budget.verdict, budget.why, budget.n) == ("inconclusive", "budget", 6)
    # The first look of the pairs given counts: 7 pairs are looked at as 6.
    assert decide([1.0, 1.2, 0.8, 1.1, 0.9, 1.0, -50.0], design).n == 6


def test_seeds_to_decide():
    design = Design(rows=1)
    assert seeds_to_decide(2.0, 0.3, design, n=3) == 6  # decided at the next look
    needed = seeds_to_decide(0.3, 0.3, design, n=10)
    assert needed > 10  # beyond the cap: the interval at `needed` pairs would exclude 0
    longer = Design(1, 0.05, 0.5, 3, needed)
    assert longer.bound(needed) * 0.3 / math.sqrt(needed) < 0.3


@pytest.mark.parametrize("bad, message", [
    ({"alpha": 0}, "study.alpha=0 must be in (0, 1)"), ({"delta": -1}, "study.delta=-1 must be > 0"),
    ({"max_seeds": 2}, "study.max_seeds=2 must be >= 3"), ({"seeds_per_round": 0}, "study.seeds_per_round=0"),
])
def test_a_bad_design_fails_in_one_line_naming_the_key(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Design(**bad)
