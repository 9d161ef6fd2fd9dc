"""nextrap.json through its one reader and writer: round trips, older and newer schemas, lookups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextrap.errors import CheckpointError
from nextrap.formats.report import REPORT_NAME, SCHEMA_VERSION, OutputEntry, Report


def _report(outputs: list[OutputEntry]) -> Report:
    return Report(
        nextrap_version="0.1.0",
        created="2026-11-25T00:00:00+0000",
        inputs={"root": "/runs/a", "layout": "trl", "checkpoints": [{"step": 10}, {"step": 20}, {"step": 30}]},
        options={"method": "linear"},
        device="cpu",
        method="linear",
        horizon={"intervals": 1, "steps": 10, "requested": None, "training_pairs": 2},
        last_step=30,
        spacing={"median": 10.0, "spread": 0.0},
        predictor={},
        outputs=outputs,
        notes=["a note"],
        seconds=1.5,
    )


def test_save_then_load_gives_the_same_report(tmp_path: Path):
    report = _report([OutputEntry(coef=1.0, path="coef-1.0", virtual_step=40.0), OutputEntry(2.0, "coef-2.0", 50.0)])
    report.save(tmp_path)
    loaded = Report.load(tmp_path)
    assert loaded == report  # the folder is not part of equality
    assert loaded.folder == tmp_path
    assert json.loads((tmp_path / REPORT_NAME).read_text())["schema_version"] == SCHEMA_VERSION
    assert "backtest" not in json.loads((tmp_path / REPORT_NAME).read_text())  # absent unless auto
    assert loaded.checkpoint_steps == [10, 20, 30]
    assert [e.step for e in loaded.outputs] == [40, 50]


def test_a_version_0_report_without_schema_version_is_read(tmp_path: Path):
    data = _report([OutputEntry(1.5, ".", 45.0)]).to_dict()
    del data["schema_version"]
    data["an_old_field"] = 1  # fields a later version dropped are ignored
    data["outputs"][0]["an_old_entry_field"] = "x"
    (tmp_path / REPORT_NAME).write_text(json.dumps(data))
    loaded = Report.load(tmp_path)
    assert loaded.outputs[0].coef == 1.5 and loaded.schema_version == SCHEMA_VERSION


def test_a_newer_schema_is_a_one_line_error(tmp_path: Path):
    data = _report([]).to_dict() | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / REPORT_NAME).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="upgrade nextrap"):
        Report.load(tmp_path)


@pytest.mark.parametrize(
    ("text", "match"), [(None, "no nextrap.json"), ("{not json", "unreadable"), ('{"a": 1}', "not a nextrap report")]
)
def test_missing_or_foreign_reports_are_one_line_errors(tmp_path: Path, text: str | None, match: str):
    if text is not None:
        (tmp_path / REPORT_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=match):
        Report.load(tmp_path)


def test_find_and_entry_for_locate_an_adapter_in_the_folder_or_its_parent(tmp_path: Path):
    _report([OutputEntry(1.0, "coef-1.0", 40.0), OutputEntry(2.0, "coef-2.0", 50.0)]).save(tmp_path)
    (tmp_path / "coef-2.0").mkdir()
    found = Report.find(tmp_path / "coef-2.0")
    assert found is not None and found.folder == tmp_path
    assert found.entry_for(tmp_path / "coef-2.0").virtual_step == 50.0
    assert found.entry_for(tmp_path / "elsewhere") is None
    assert Report.find(tmp_path / "coef-2.0" / "deeper") is None  # only the folder and its parent
    (tmp_path / "single").mkdir()
    _report([OutputEntry(1.0, ".", 40.0)]).save(tmp_path / "single")
    single = Report.find(tmp_path / "single")
    assert single.path_of(single.outputs[0]) == tmp_path / "single"


def _refuse(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def test_the_report_is_strict_json_for_every_method(tiny_run: Path, tmp_path: Path):
    """NaN and Infinity are not JSON: a linear extrapolation (no predicted sigma) writes null, not NaN."""
    import nextrap

    for method in ("linear", "relex"):
        out = tmp_path / method
        nextrap.extrapolate(tiny_run, out, nextrap.ExtrapolateOptions(method=method))
        data = json.loads((out / REPORT_NAME).read_text(), parse_constant=_refuse)
        modules = data["outputs"][0]["modules"]
        assert modules and all(m["predicted_sigma"] is None for m in modules.values())
    saved = Report.from_dict({**json.loads((tmp_path / "linear" / REPORT_NAME).read_text()), "seconds": float("nan")})
    again = tmp_path / "again"
    again.mkdir()
    saved.save(again)  # any figure that is not finite is written as null
    assert json.loads((again / REPORT_NAME).read_text(), parse_constant=_refuse)["seconds"] is None
