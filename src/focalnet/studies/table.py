"""focalnet-study --table: every study's rows on one data set in one markdown table, from what each study's files
and runs hold now (docs/studies.md's Results)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from focalnet.record import Status
from focalnet.studies.analysis import aggregate, compare
from focalnet.studies.design import load_spec
from focalnet.studies.ledger import first_host, read_state, settle_design, study_host
from focalnet.studies.markdown import interval, signed, verdict_text
from focalnet.studies.runs import cell
from focalnet.studies.study_runs import runs, scope, with_hosts


def table(data: str, experiments: Path = Path("experiments"), overrides: list[str] | None = None,
          family: str = "study") -> str:
    """Every study's rows on `data` in one markdown table, from what each study's files and runs hold now: n, Δ, the
    interval, the verdict, the seeds and the paper's Δ (docs/studies.md's Results), and a line after it naming the
    family α is family-wise over: each study's own rows ("study"), or every row of the table ("table": K = all of
    them, for claims about the table as a whole). A study not yet run has no rows in it (the line names it)."""
    lines = ["| study | setting vs baseline | n | Δ top-1 (pts) | interval (pts) | verdict | paper Δ (pts) |",
             "|---|---|---|---|---|---|---|"]
    studies, waiting = [], []
    for path in sorted(experiments.glob("*/study.yaml")):
        spec = load_spec(path.parent.name, data, overrides, experiments)
        state = read_state(spec)
        rows = with_hosts(spec, runs(spec, state))
        if "frozen" in state:
            settle_design(spec, state, rows)  # refused where the study's file no longer says what was frozen
            host = study_host(spec, state, None)
        else:
            host = None if spec.hosts == "any" else first_host(spec, rows)
        used = scope(spec, rows, host).used
        if not any(r.status == Status.COMPLETED for r in used):
            waiting.append(spec.name)
            continue
        studies.append((spec, used, state.get("closed")))
    k = sum(len(spec.values) - 1 for spec, _, _ in studies)
    for spec, used, closed in studies:
        design, stopped = spec.design, None
        if family == "table":  # a finished study adds no seeds: a row its own family decided may be inconclusive here
            design, stopped = dataclasses.replace(spec.design, rows=k), "stopped" if closed else None
        configs = aggregate(used, keys=[spec.key], settings=[(v,) for v in spec.values])
        compare(configs, [spec.key], {"baseline": {spec.key: spec.baseline}, "paper": spec.paper, "design": design,
                                      "seeds": spec.seeds, "stopped": stopped})
        short = spec.key.rsplit(".", 1)[-1]
        for c in configs:
            if c["is_baseline"]:
                continue
            lines.append(f"| {spec.name} | {short}={cell(c[spec.key])} vs {cell(spec.baseline)} | {c['n_pairs']} | "
                         f"{signed(c['delta'])} | {interval(c['ci_low'], c['ci_high'])} | {verdict_text(c, design)} | "
                         f"{signed(c.get('paper_delta'), 1)} |")
    alphas = sorted({spec.design.alpha for spec, _, _ in studies})
    alpha = " / ".join(f"{a:g}" for a in alphas) or "-"
    if family == "table":
        line = (f"Family: the table: α = {alpha} family-wise over all {k} rows of its {len(studies)} studies "
                f"(K = {k}; each row's interval and verdict at α/{k}), for claims about the table as a whole; "
                "a finished study's row its own family decided is inconclusive (stopped) where this one does not.")
    else:
        line = (f"Family: per study: α = {alpha} family-wise over each study's own rows (K = its rows); "
                f"`--family table` splits α over all {k} rows of the table.")
    if waiting:
        line += f" Not yet run: {', '.join(waiting)}."
    # A blockquote ends a markdown table without an empty line (GFM): the table's own lines stay as they were.
    return "\n".join(lines) + "\n> " + line + "\n"


