"""Studies that end with an answer: seeds are added in rounds until each row is decided, with error rates that hold.

A row compares one setting with the study's baseline, paired by seed: d_s = top-1(setting, seed s) - top-1(baseline,
seed s), in points. The study looks at the rows after every round of `seeds_per_round` seeds (n = 3, 6, 9, then the
cap 10), and at a look with n pairs each undecided row gets a *repeated confidence interval* (Jennison & Turnbull,
"Interim analyses: the repeated confidence interval approach", JRSS B 1989) and an equivalence interval:

    mean(d) ± c_n · sd(d) / √n          mean(d) ± c^eq_n · sd(d) / √n

and the verdicts are read off them:

    better / worse   the interval lies above / below 0
    equivalent       the equivalence interval lies inside ±δ
    inconclusive     the cap or the budget came first        (no claim)

Two procedures set c_n and c^eq_n (Design.procedure; a study keeps the one its verdicts were decided with):

"bonferroni" (the default). c^eq_n = c_n, the t quantile (n - 1 degrees of freedom) at 1 - a_n / 2, each look's
two-sided level a_n a share of α / K (K: the study's rows) in proportion to n - 2. By the union bound over the looks
and the rows every interval of every row at every look covers its true difference at once with probability at least
1 - α, whatever the rows' dependence (they share the baseline runs) and whatever made the study stop. The union bound
ignores that a row's looks are strongly correlated (T_9 and T_10 share 9 of 10 pairs): the study errs with
probability about 0.034 (one row) to 0.036 (four), not 0.05.

"obf". Under normal d_s the t-statistics T_n = √n (mean_n - Δ) / sd_n at a row's looks have a joint law free of σ,
so the critical values are calibrated once for it (`calibrate`, stored in sequential_bounds.json): c_n so that
P(|T| first crosses c at look n) is the increment of Lan & DeMets' O'Brien-Fleming-type spending function
α(t) = 2 - 2Φ(z_{1-a/2} / √t), t = n / cap, and c^eq_n the same one-sided (TOST: α(t) = 1 - Φ(z_{1-a} / √t)). It
spends almost nothing early (the look at 3 pairs, a t with 2 degrees of freedom, still almost never decides) and
keeps the last c_n near a fixed-n test's. A wrong verdict needs a crossing: "better" or "worse" at Δ = 0 a
two-sided one, "worse" at Δ > 0 or "better" at Δ < 0 a one-sided one, "equivalent" at |Δ| >= δ a one-sided crossing
of c^eq (and c^eq_n < c_n, so a wrong "worse" at Δ >= δ crosses it too). With each boundary crossed with probability
at most a = α / K, each row errs with probability at most a and the study, by the union bound over its rows, at most
α, whatever stopped it.
Skewed differences make a t-statistic's tails heavier (a one-sided test's most), and a boundary that spends all of a
has no room for that. So `calibrate` lowers the level spent under normal differences (the record's "nominal": some
0.91 a two-sided and 0.66 a one-sided for one row, 0.76 a and 0.46 a for ten) until differences of skewness SKEW
(a standardized gamma) cross each boundary with probability at most a: the guarantee holds for normal differences
and at that skew. docs/sequential.md measures it, and skewness 1 (where neither procedure holds α) and heavy tails.

focalnet.studies.simulation measures the rates on simulated studies, every wrong verdict counted (`python -m
focalnet.studies.simulation --doc` prints docs/sequential.md's tables); `replication_seeds` says what a fresh fixed-n
study would need past the cap. The family is the K rows a caller passes as Design.rows: a study's rows, or every row
of a table.

Why not a library: AdaStop (adaptive permutation tests with family-wise control) compares unpaired groups, and its
"equal" means "not rejected", not "within ±δ"; with sign-flip permutations of 3-10 pairs its smallest p-values
(1/8 at 3 pairs) cannot decide early. Confidence sequences (confseq, expectation) need bounded or sub-Gaussian
increments with a known scale: for differences in [-100, 100] points they stay tens of points wide at 10 seeds.
Python has no group-sequential library for a paired t at a few looks (R's gsDesign and rpact work on the z scale).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, stats

VERDICTS = ("better", "worse", "equivalent", "inconclusive")
PENDING = "pending"  # undecided, with more seeds due
PROCEDURES = ("bonferroni", "obf")

# The "obf" calibration. METHOD names what `calibrate` does: change it with the method, and stored bounds of the old
# one are no longer used. The committed bounds use SEED and PATHS; a design they lack is calibrated on first use with
# FIRST_USE_PATHS (about a second) into the user's cache. The draws come CHUNK paths at a time, so they depend on it.
METHOD = "obf-t-1"
SKEW = 0.5  # the skewness the "obf" boundaries withstand (module docstring); 0: calibrated for normal differences only
SEED = 1
PATHS = 1_000_000
FIRST_USE_PATHS = 200_000
CHUNK = 100_000
BOUNDS_FILE = Path(__file__).with_name("sequential_bounds.json")


@dataclass(frozen=True)
class Design:
    """A study's question: its margin δ (points), family-wise α over its `rows`, seeds per round, the cap and the
    procedure that turns them into intervals ("bonferroni" or "obf", see the module's docstring)."""

    rows: int = 1
    alpha: float = 0.05
    delta: float = 0.5
    seeds_per_round: int = 3
    max_seeds: int = 10
    procedure: str = "bonferroni"

    def __post_init__(self) -> None:
        allowed = {"rows": ">= 1", "alpha": "in (0, 1)", "delta": "> 0", "seeds_per_round": ">= 1",
                   "max_seeds": ">= 3", "procedure": " or ".join(PROCEDURES)}
        checks = {"rows": self.rows >= 1, "alpha": 0 < self.alpha < 1, "delta": self.delta > 0,
                  "seeds_per_round": self.seeds_per_round >= 1, "max_seeds": self.max_seeds >= 3,
                  "procedure": self.procedure in PROCEDURES}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"study.{key}={getattr(self, key)} must be {allowed[key]}")

    @property
    def looks(self) -> list[int]:
        """The numbers of pairs at which rows are looked at: every round's end, then the cap (no look below 3)."""
        ns = list(range(self.seeds_per_round, self.max_seeds, self.seeds_per_round)) + [self.max_seeds]
        return [n for n in ns if n >= 3]

    def level(self, n: int) -> float:
        """The two-sided level the look at n pairs spends (normal differences): for "bonferroni" its share of
        α / rows, in proportion to n - 2; for "obf" the spending function's increment at the calibrated level."""
        if self.procedure == "obf":
            a, k = self.calibration(False)["nominal"], self.looks.index(n)
            return _spent(n / self.max_seeds, a, 2) - (_spent(self.looks[k - 1] / self.max_seeds, a, 2) if k else 0)
        weights = {m: m - 2 for m in self.looks}
        return self.alpha / self.rows * weights[n] / sum(weights.values())

    def bound(self, n: int) -> float:
        """c_n: the interval at n pairs is mean ± c_n · sd / √n."""
        return _bound(self, n, False)

    def eq_bound(self, n: int) -> float:
        """c^eq_n: the row is equivalent when mean ± c^eq_n · sd / √n lies inside ±δ (c_n for "bonferroni")."""
        return _bound(self, n, True)

    def calibration(self, equivalence: bool) -> dict:
        """The "obf" calibration record of c_n (or of c^eq_n): see `obf_bounds`."""
        return obf_bounds(tuple(self.looks), self.alpha / self.rows, 1 if equivalence else 2)

    def calibration_record(self) -> dict | None:
        """For "obf": how its critical values were calibrated and the values themselves, as a frozen design records
        them (a later change of method, seed or numbers is then a change of design); None for "bonferroni"."""
        if self.procedure != "obf":
            return None
        two, one = self.calibration(False), self.calibration(True)
        return {"method": METHOD, "skew": SKEW, "seed": two["seed"], "paths": two["paths"],
                "nominal": [two["nominal"], one["nominal"]], "c": two["c"], "c_eq": one["c"]}

    def look_at(self, n: int) -> int | None:
        """The last look that n pairs reach (None below the first)."""
        reached = [m for m in self.looks if m <= n]
        return reached[-1] if reached else None

    def next_look(self, n: int) -> int | None:
        later = [m for m in self.looks if m > n]
        return later[0] if later else None


@functools.lru_cache(maxsize=4096)
def _bound(design: Design, n: int, equivalence: bool) -> float:
    if design.procedure == "bonferroni":
        return float(stats.t.ppf(1 - design.level(n) / 2, n - 1))
    return design.calibration(equivalence)["c"][design.looks.index(n)]


def _spent(t: float, a: float, sides: int) -> float:
    """The O'Brien-Fleming-type spending function at information fraction t: 2 - 2Φ(z_{1-a/2} / √t) two-sided,
    1 - Φ(z_{1-a} / √t) one-sided (sf and isf keep its tiny early values exact)."""
    return sides * float(stats.norm.sf(stats.norm.isf(a / sides) / math.sqrt(t)))


def t_paths(looks: Sequence[int], seed: int, paths: int, noise: str = "normal") -> np.ndarray:
    """The t-statistics √n · mean_n / sd_n at the looks of `paths` simulated rows of unit-variance, mean-0
    differences (`draws`), shape (paths, looks); drawn CHUNK paths at a time from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    idx = np.asarray(looks) - 1
    n = np.asarray(looks, dtype=float)
    out = []
    for start in range(0, paths, CHUNK):
        z = draws(rng, noise, (min(CHUNK, paths - start), looks[-1]))
        s, q = np.cumsum(z, axis=1)[:, idx], np.cumsum(z * z, axis=1)[:, idx]
        out.append(s / np.sqrt(n * (q - s * s / n) / (n - 1)))
    return np.concatenate(out)


def boundary(t: np.ndarray, looks: Sequence[int], a: float, sides: int) -> list[float]:
    """The critical values at the looks for the joint law of the paths `t` (`t_paths`): P(|T| (sides 2) or T
    (sides 1) first crosses c at look k) is the spending function's increment at look k. That probability is
    P(T_k > c) - P(T_k > c, crossed before): the first term exactly from the t law (n - 1 degrees of freedom), the
    second, small, from the paths. So the first look is exact, and the early looks' tiny increments (1e-7 and less)
    need no more paths than the last look's."""
    x = np.abs(t) if sides == 2 else t
    crossed = np.zeros(len(x), dtype=bool)
    bounds, before = [], 0.0
    for k, n in enumerate(looks):
        spent = _spent(n / looks[-1], a, sides)
        increment, before = spent - before, spent
        overlap = np.sort(x[crossed, k])

        def excess(c: float, overlap: np.ndarray, n: int, increment: float) -> float:
            both = (len(overlap) - np.searchsorted(overlap, c, side="right")) / len(x)
            return sides * float(stats.t.sf(c, n - 1)) - both - increment

        c = (optimize.brentq(excess, 1e-9, 1e15, args=(overlap, n, increment), xtol=1e-12) if increment > 0
             else math.inf)
        bounds.append(c)
        crossed |= x[:, k] > c
    return bounds


def calibrate(looks: Sequence[int], a: float, sides: int, seed: int = SEED, paths: int = PATHS, skew: float = SKEW,
              drawn: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The "obf" boundary of per-row level a at the looks, as a record for sequential_bounds.json: `boundary` on
    normal paths (seed) at the largest level a' <= a ("nominal") at which paths of skewness -skew (seed + 1; the
    heavier tail of T is then the upper one) cross it with probability at most a. `drawn`: both path sets, drawn."""
    normal = drawn[0] if drawn else t_paths(looks, seed, paths)
    share = 1.0
    if skew:
        skewed = drawn[1] if drawn else t_paths(looks, seed + 1, paths, f"skew{-skew}")
        x = np.abs(skewed) if sides == 2 else skewed

        def excess(share: float) -> float:
            return float((x > np.asarray(boundary(normal, looks, share * a, sides))).any(axis=1).mean()) - a

        share = 1.0 if excess(1.0) <= 0 else optimize.brentq(excess, 0.01, 1.0, xtol=1e-4)
    return {"looks": list(looks), "a": a, "sides": sides, "method": METHOD, "skew": skew, "seed": seed,
            "paths": paths, "nominal": round(share * a, 8),
            "c": [round(c, 6) for c in boundary(normal, looks, share * a, sides)]}


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "focalnet" / BOUNDS_FILE.name


def _records(path: Path) -> list[dict]:
    try:
        return json.loads(path.read_text())["bounds"]
    except (OSError, ValueError, KeyError):  # missing or unreadable: recomputed, not trusted
        return []


def _find(records: list[dict], looks: tuple[int, ...], a: float, sides: int) -> dict | None:
    for r in records:
        if (r["method"], r.get("skew"), tuple(r["looks"]), r["sides"]) == (METHOD, SKEW, looks, sides) \
                and math.isclose(r["a"], a):
            return r
    return None


def _dumps(records: list[dict]) -> str:
    return '{"bounds": [\n' + ",\n".join("  " + json.dumps(r) for r in records) + "\n]}\n"


@functools.lru_cache(maxsize=256)
def obf_bounds(looks: tuple[int, ...], a: float, sides: int) -> dict:
    """The calibration record for these looks, per-row level and sides (`calibrate`: looks, a, sides, method, skew,
    seed, paths, the nominal level spent under normal differences, c): from sequential_bounds.json (the project's
    designs), else from the user's cache, else calibrated now with FIRST_USE_PATHS paths and added to that cache."""
    found = _find(_records(BOUNDS_FILE), looks, a, sides) or _find(_records(_user_cache()), looks, a, sides)
    if found is None:
        found = calibrate(looks, a, sides, SEED, FIRST_USE_PATHS, SKEW)
        cache = _user_cache()
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(_dumps(_records(cache) + [found]))
        except OSError:  # a read-only home: the bounds are used, not kept
            pass
    return found


def project_designs() -> list[Design]:
    """The designs whose "obf" bounds are committed: 1-10 rows at α = 0.05, 3 seeds a round, cap 10 or 20 (the
    replication design, 10 rows up to 20 seeds, among them)."""
    return [Design(rows=k, max_seeds=cap, procedure="obf") for cap in (10, 20) for k in range(1, 11)]


def write_bounds(designs: Sequence[Design] = (), path: Path = BOUNDS_FILE) -> None:
    """Calibrate (SEED, PATHS) the bounds of `designs` (the project's when none) and write them to `path`:
    `python -m focalnet.studies.simulation --calibrate`. Each look schedule's paths are drawn once for all its
    levels."""
    designs = list(designs) or project_designs()
    records = []
    for looks in dict.fromkeys(tuple(d.looks) for d in designs):
        drawn = (t_paths(looks, SEED, PATHS), t_paths(looks, SEED + 1, PATHS, f"skew{-SKEW}") if SKEW else None)
        for a in dict.fromkeys(d.alpha / d.rows for d in designs if tuple(d.looks) == looks):
            records += [calibrate(looks, a, sides, SEED, PATHS, SKEW, drawn) for sides in (2, 1)]
    path.write_text(_dumps(records))


@dataclass(frozen=True)
class Decision:
    n: int                   # pairs used (the look's), 0 when below the first look
    delta: float | None      # mean paired difference (points)
    sd: float | None
    low: float | None        # the repeated confidence interval (better / worse)
    high: float | None
    verdict: str             # one of VERDICTS, or PENDING
    why: str = ""            # for inconclusive: "cap" or "budget"
    eq_low: float | None = None   # the equivalence interval (low, high for "bonferroni")
    eq_high: float | None = None


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
    eq_half = design.eq_bound(n) * sd / math.sqrt(n)
    eq = {"eq_low": mean - eq_half, "eq_high": mean + eq_half}
    if low > 0:
        verdict = "better"
    elif high < 0:
        verdict = "worse"
    elif -design.delta < eq["eq_low"] and eq["eq_high"] < design.delta:
        verdict = "equivalent"
    elif n >= design.max_seeds or stopped:
        return Decision(n, mean, sd, low, high, "inconclusive", "cap" if n >= design.max_seeds else stopped, **eq)
    else:
        verdict = PENDING
    return Decision(n, mean, sd, low, high, verdict, **eq)


def seeds_to_decide(mean: float, sd: float, design: Design, n: int = 0, limit: int = 1000) -> int | None:
    """How many pairs in all the observed mean and sd (over n pairs) say would decide the row: the first later look
    of the design whose intervals would exclude 0 or fit inside ±δ, else, for "bonferroni", the first cap beyond the
    design's that would (the same rounds, the cap raised); None beyond `limit`, and for "obf" past its cap (each
    raised cap would be another calibration: `replication_seeds` says what a fresh study would need). An estimate:
    the next seeds will not repeat the mean and sd exactly."""
    if sd == 0:
        return max(n, design.looks[0])

    def decides(d: Design, m: int) -> bool:
        return d.bound(m) * sd / math.sqrt(m) < abs(mean) or abs(mean) + d.eq_bound(m) * sd / math.sqrt(m) < d.delta

    for m in design.looks:
        if m > n and decides(design, m):
            return m
    if design.procedure == "obf":
        return None
    for cap in range(design.max_seeds + 1, limit + 1):
        if decides(dataclasses.replace(design, max_seeds=cap), cap):
            return cap
    return None


def replication_seeds(mean: float, sd: float, design: Design, power: float = 0.8,
                      limit: int = 10_000) -> dict[str, int | None]:
    """The pairs a fresh fixed-n replication (one look) would need for `power` if the true difference were `mean`
    and the sd `sd`, at the design's per-row level a = α / rows: "difference", a paired t-test two-sided at a, for
    |mean|; "equivalence", a TOST within ±δ (each one-sided test at a). None where no n up to `limit` reaches it
    (mean 0 for a difference, |mean| >= δ for equivalence). For a row the cap left inconclusive."""
    a = design.alpha / design.rows
    ns = np.arange(2, limit + 1)
    df, se = ns - 1, sd / np.sqrt(ns)
    c2, c1 = stats.t.isf(a / 2, df), stats.t.isf(a, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = abs(mean) / se
        test = stats.nct.sf(c2, df, shift) + stats.nct.cdf(-c2, df, shift)
        # TOST rejects when both one-sided tests do: 1 - P(one fails) - P(the other fails), a hair below its power
        tost = 1 - stats.nct.cdf(c1, df, (design.delta - mean) / se) - stats.nct.cdf(c1, df, (design.delta + mean) / se)

    def first(p: np.ndarray) -> int | None:
        hit = np.flatnonzero(p >= power)
        return int(ns[hit[0]]) if hit.size else None

    return {"difference": first(test) if mean != 0 and sd > 0 else None,
            "equivalence": first(tost) if abs(mean) < design.delta and sd > 0 else None}


def draws(rng: np.random.Generator, noise: str, shape: tuple[int, ...]) -> np.ndarray:
    """Mean-0, unit-variance draws: "normal", "t3" (Student t, 3 degrees of freedom) or "skew<g>" (a standardized
    gamma of skewness g: skew0.5, skew1; skew-0.5 mirrors it)."""
    if noise == "normal":
        return rng.standard_normal(shape)
    if noise == "t3":
        return rng.standard_t(3, shape) / math.sqrt(3.0)
    try:
        g = float(noise[4:]) if noise.startswith("skew") else 0.0
    except ValueError:
        g = 0.0
    if g:
        k = 4 / g**2  # a gamma of shape k has skewness 2 / √k
        return math.copysign(1, g) * (rng.standard_gamma(k, shape) - k) / math.sqrt(k)
    raise ValueError(f"noise={noise!r} must be 'normal', 't3' or 'skew<skewness>' (e.g. 'skew0.5')")
