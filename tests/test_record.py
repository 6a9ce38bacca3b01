"""The run record (focalnet.record): summary.json declared once, read and written through one type."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, read_summary, run_cli
from focalnet.record import NotARecord, RunRecord, Status, read_record, read_status, write_record


def test_a_run_writes_a_record_every_reader_reads(tmp_path):
    result = run_cli("focalnet-train", *TINY, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_record(tmp_path / "run")
    assert record.status == Status.COMPLETED and record.status.ended_well and not record.status.failed
    assert record.metrics["val/acc_top1"] == read_summary(tmp_path / "run")["metrics"]["val/acc_top1"]
    assert [p.status for p in record.parts] == [Status.COMPLETED] and record.parts[0].wall_time_s > 0
    # What a tool adds beyond the declared keys is kept as written: the file and the record say the same.
    assert record.model_dump(mode="json", exclude_unset=True) == read_summary(tmp_path / "run")


def test_an_earlier_record_reads_and_a_broken_one_is_refused_in_one_line(tmp_path):
    # A summary as focalnet wrote it before parts, warnings and trials were recorded.
    old = {"status": "completed", "error": None, "metrics": {"test/acc_top1": 0.9}, "seed": 0, "job_num": 3,
           "overrides": {"model.focal_levels": 2}, "started_at": "2026-11-20T10:00:00+00:00"}  # fmt: skip
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps(old))
    record = read_record(tmp_path / "old")
    assert record.status == Status.COMPLETED and record.parts == [] and record.trial is None
    assert record.model_dump(mode="json", exclude_unset=True) == old
    cases = {
        "text": ("{not json", "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        "list": ("[1, 2]", "not a run record (a JSON list, not an object)"),
        "status": ('{"status": "done"}', "not a run record (status: Input should be 'running', 'completed', 'pruned', "
                                         "'failed' or 'interrupted')"),
        "params": ('{"status": "running", "params": "many"}', "not a run record (params: Input should be a valid "
                                                               "integer, unable to parse string as an integer)"),
    }  # fmt: skip
    for name, (text, why) in cases.items():
        path = tmp_path / name / "summary.json"
        path.parent.mkdir()
        path.write_text(text)
        with pytest.raises(NotARecord) as error:
            read_record(path)
        assert str(error.value) == f"{path}: {why}", name
        assert read_status(path) is None
    # The report lists such a job as missing, with the same line.
    from focalnet.studies.runs import collect_folder

    (row,) = collect_folder(tmp_path / "list")
    assert row.status == "missing" and row.error == f"{tmp_path / 'list' / 'summary.json'}: {cases['list'][1]}"


def test_a_wrong_type_is_refused_when_written_and_the_file_stays(tmp_path):
    write_record(tmp_path, {"status": Status.RUNNING, "params": 12})
    before = (tmp_path / "summary.json").read_bytes()
    with pytest.raises(ValueError, match="params"):
        write_record(tmp_path, {"status": Status.COMPLETED, "params": "many"})
    assert (tmp_path / "summary.json").read_bytes() == before
    assert json.loads(before) == {"status": "running", "params": 12}
    assert {s.value for s in Status} == set(RunRecord.model_json_schema()["$defs"]["Status"]["enum"])


def test_the_job_records_through_the_records_methods_and_each_value_is_checked_as_it_is_set(tmp_path):
    identity = {"host": "node1", "run_dir": str(tmp_path), "sweep_dir": None}
    earlier = [{"started_at": "2026-11-20T10:00:00+00:00", "host": "node0", "status": "killed", "wall_time_s": 2.0}]
    record = RunRecord.begin(identity, task="train", seed=0, git={}, versions={}, machine={}, warnings=["w"],
                             earlier=earlier, slurm={})  # fmt: skip
    with pytest.raises(ValueError, match="params"):
        record.model_size(params="many", flops=1)
    record.interrupt({"signal": "SIGTERM", "epoch": 0, "step": 3, "checkpoint": "last.ckpt"}, "resume=auto continues")
    record.end_part(1.0)
    write_record(tmp_path, record)
    summary = read_summary(tmp_path)
    assert summary["status"] == "interrupted" and summary["started_at"] == earlier[0]["started_at"]
    assert summary["error"] == "interrupted by SIGTERM at epoch 0, step 3; resume=auto continues"
    assert summary["wall_time_s"] == 3.0 and [p["host"] for p in summary["parts"]] == ["node0", "node1"]
    assert summary["parts"][1]["step"] == 3 and "params" not in summary and summary["warnings"] == ["w"]
    assert read_record(tmp_path).model_dump(mode="json", exclude_unset=True) == summary
