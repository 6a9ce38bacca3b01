"""The search space in Hydra's sweep syntax, as Optuna distributions.

`hydra.sweeper.params` and the command line write a searched key as Hydra writes a sweep: `interval(a, b)` (a float
between a and b), `tag(log, interval(a, b))` (on a log scale), `range(a, b, step)` (Hydra's range: b excluded),
`choice(x, y)` or `x,y`. A plain `key=value` on the command line fixes that key: it is not searched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def parse_space(params: Mapping[str, object] | None, arguments: Iterable[str]
                ) -> tuple[dict[str, BaseDistribution], dict[str, str]]:  # fmt: skip
    """(searched keys -> distributions, fixed keys -> their override value). The command line comes after `params`,
    so it wins; a key fixed on the command line is taken out of the space."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
            fixed.pop(key, None)
        else:
            fixed[key] = override.get_value_element_as_str()
            space.pop(key, None)
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    """One sweep override as the Optuna distribution that draws exactly its values."""
    sweep, key = override.value(), override.get_key_element()
    log = "log" in (sweep.tags or set())
    if isinstance(sweep, IntervalSweep):
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise ValueError(f"{key}=range({sweep.start}, {sweep.stop}, {sweep.step}) holds no value")
        whole = all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step))
        kind = IntDistribution if whole else FloatDistribution
        if log:  # Optuna's log scale takes no step
            return kind(values[0], values[-1], log=True)
        return kind(values[0], values[-1], step=sweep.step)
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    raise ValueError(f"{key}: {override.get_value_element_as_str()} is not a search space Optuna can draw from "
                     "(interval, range or choice)")  # fmt: skip
