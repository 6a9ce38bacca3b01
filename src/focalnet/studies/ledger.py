"""A study's ledger, rounds.json: its frozen design (hashed before the first look; a change is refused unless a new
ledger supersedes it), the rounds run so far and the budget they spent, and the host class its verdicts use."""

from __future__ import annotations

import hashlib
import json

from focalnet.files import now
from focalnet.record import Status
from focalnet.studies.design import Spec
from focalnet.studies.runs import Run

FROZEN_BEFORE = "before the first look"
FROZEN_AFTER = "recorded after the looks"


def spent_hours(state: dict) -> float:
    return sum(r.get("wall_time_s") or 0 for r in state.get("rounds", [])) / 3600


def read_state(spec: Spec) -> dict:
    """rounds.json of the study's folder: its frozen design, the rounds run so far (their wall time counts against
    the budget), each row's verdict, and the ledgers an earlier design kept (superseded)."""
    try:
        return json.loads((spec.out / "rounds.json").read_text())
    except (OSError, ValueError):
        return {"study": spec.name, "data": spec.data, "rounds": []}


def design_of(spec: Spec) -> dict:
    """The study's question as its file declares it: rows and their settings, the baseline, the family (K rows),
    δ, α, the looks, the procedure (for "obf" its calibration: method, seed, paths and critical values), the seeds,
    the re-runs and the host policy (the recipe and host class are added by freeze())."""
    d = spec.design
    return {"rows": {spec.label(v): json.loads(spec.settings[v]) for v in spec.values if v != spec.baseline},
            "baseline": {spec.label(spec.baseline): json.loads(spec.settings[spec.baseline])},
            "K": d.rows, "alpha": d.alpha, "delta": d.delta, "seeds_per_round": d.seeds_per_round,
            "max_seeds": d.max_seeds, "looks": d.looks, "procedure": d.procedure, "seeds": spec.seeds,
            "reruns": {spec.label(v): sorted(s) for v, s in spec.reruns.items()}, "hosts": spec.hosts} | (
        {"calibration": d.calibration_record()} if d.procedure == "obf" else {})


def _hash(design: dict) -> str:
    return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


def freeze(spec: Spec, host: str | None, frozen: str) -> dict:
    design = design_of(spec) | {"recipe": spec.recipe_id, "host_class": host}
    record = {"frozen": frozen, "hash": _hash(design), "design": design}
    if frozen == FROZEN_BEFORE:
        record["at"] = now()
    return record


def fix_host_class(state: dict, host: str) -> None:
    """The first round starts on `host`: its class becomes the study's (before any look at its data)."""
    design = state["frozen"]["design"] | {"host_class": host}
    state["frozen"] |= {"design": design, "hash": _hash(design), "host_class_at": now()}


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def design_changes(spec: Spec, state: dict) -> list[str]:
    """What differs between the study's frozen design and the one its file and the configs declare now, as
    "what old → new"; [] when nothing. The recipe is compared by what it computes: a key added to the configs since
    (a new switch, off) is no change, a key whose value differs is."""
    frozen, now_ = state["frozen"]["design"], design_of(spec)
    changes = []
    for key, value in now_.items():
        old = frozen.get(key)
        if key == "rows" and old != value:
            for row in sorted(set(old or {}) | set(value), key=str):
                if (old or {}).get(row) != value.get(row):
                    changes.append(f"row {row} {_short((old or {}).get(row, 'absent'))} → "
                                   f"{_short(value.get(row, 'absent'))}")
        elif old != value:
            changes.append(f"{key} {_short(old)} → {_short(value)}")
    reference = state.get("reference") or {}
    differ = [k for k in sorted(reference) if spec.reference.get(k) != reference[k]]
    changes += [f"recipe {k} {reference[k]} → {spec.reference.get(k, 'absent')}" for k in differ[:3]]
    if len(differ) > 3:
        changes.append(f"recipe: {len(differ) - 3} more keys")
    return changes


def settle_design(spec: Spec, state: dict, rows: list[Run], new_design: bool = False) -> dict:
    """The state with the study's frozen design, checked: recorded now where the ledger has none (before the first
    look, or after the looks for a ledger older than frozen designs), refused in one line (ValueError) where the
    declared design differs from it, unless `new_design`: then a new ledger, the old one kept as superseded."""
    reference = state.get("reference")
    if reference and not any(spec.reference.get(k) != v for k, v in reference.items()):
        spec.frozen_recipe = state.get("recipe")  # the same recipe (keys added since are no change): its id
    if "frozen" not in state:
        if new_design:
            raise ValueError(f"study {spec.name}: --new-design: no design recorded yet to supersede")
        legacy = bool(state.get("rounds"))
        host = first_host(spec, rows) if legacy and spec.hosts == "same" else None
        state["frozen"] = freeze(spec, host, FROZEN_AFTER if legacy else FROZEN_BEFORE)
        return state
    changes = design_changes(spec, state)
    what = f"(frozen {state['frozen']['frozen']}, {state['frozen']['hash']})"
    if changes and not new_design:
        raise ValueError(f"study {spec.name}: the design changed since it was frozen {what}: {'; '.join(changes)}; "
                         "refused (its verdicts were decided under the frozen one): --new-design starts a new "
                         "ledger and keeps the old verdicts, marked superseded"
                         + ("" if state.get("rounds") else " (no round has run yet: it only replaces the design)"))
    if not changes and new_design:
        raise ValueError(f"study {spec.name}: --new-design: the design is the frozen one {what}; nothing to "
                         "supersede")
    if new_design:
        spec.frozen_recipe = None
        kept = {k: state[k] for k in ("frozen", "rounds", "verdicts", "spent_hours", "budget_hours", "reference",
                                      "recipe", "other_commands") if k in state}
        kept |= {"superseded_at": now(), "changes": changes, "status": "superseded, kept"}
        looked = state.get("rounds") or any(v.get("n") for v in (state.get("verdicts") or {}).values())
        # A ledger that never ran a round nor looked at a pair has no verdict to keep: its design is replaced.
        superseded = [*state.get("superseded", []), kept] if looked else state.get("superseded", [])
        state = {"study": spec.name, "data": spec.data, "rounds": []} | ({"superseded": superseded} if superseded
                                                                          else {})
        state["frozen"] = freeze(spec, None, FROZEN_BEFORE)
    return state


def first_host(spec: Spec, rows: list[Run]) -> str | None:
    """The host class of the ledger's first run (the design's seeds, by start time)."""
    done = [r for r in rows if r.status == Status.COMPLETED and r.seed in spec.seeds and r.host]
    return min(done, key=lambda r: r.started_at or "").host if done else None


def study_host(spec: Spec, state: dict, here: str | None) -> str | None:
    """The host class the verdicts use: None with hosts: any; the frozen one; this machine's while the study has
    not started (the first round's host becomes the study's)."""
    if spec.hosts == "any":
        return None
    return state["frozen"]["design"].get("host_class") or here
