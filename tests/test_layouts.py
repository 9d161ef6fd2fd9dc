"""Discovery of checkpoints in each trainer's folder layout, and its error messages."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from nextrap.errors import CheckpointError, InputNotFoundError, LayoutError
from nextrap.layouts import discover, from_explicit


def _adapter(folder: Path, weights: str = "adapter_model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    (folder / weights).write_bytes(b"\0" * 256)
    return folder


def _rel(d, root: Path) -> list[str]:
    return [str(c.path.relative_to(root)) for c in d.checkpoints]


def test_trl_uses_trainer_state_global_step(tmp_path: Path):
    for n in (100, 50, 150):
        _adapter(tmp_path / f"checkpoint-{n}")
    (tmp_path / "checkpoint-150" / "trainer_state.json").write_text(json.dumps({"global_step": 151}))
    (tmp_path / "runs").mkdir()  # tensorboard logs next to checkpoints are ignored
    d = discover(tmp_path)
    assert d.layout == "trl"
    assert d.steps == (50, 100, 151)
    assert _rel(d, tmp_path) == ["checkpoint-50", "checkpoint-100", "checkpoint-150"]
    assert d.checkpoints[2].step_source == "trainer_state.json global_step"
    assert any("global_step = 151" in n for n in d.notes)
    json.dumps(d.to_dict())


def test_ms_swift_version_folder(tmp_path: Path):
    for n in (10, 20):
        _adapter(tmp_path / "v0-20260101-120000" / f"checkpoint-{n}")
    d = discover(tmp_path)
    assert (d.layout, d.steps) == ("ms-swift", (10, 20))


def test_two_ms_swift_versions_are_ambiguous(tmp_path: Path):
    _adapter(tmp_path / "v0-20260101-120000" / "checkpoint-10")
    _adapter(tmp_path / "v1-20260102-120000" / "checkpoint-10")
    with pytest.raises(LayoutError, match=r"several runs.*v0-.*v1-"):
        discover(tmp_path)


def test_roll_worker_folder(tmp_path: Path):
    for n in (5, 10, 15):
        _adapter(tmp_path / "actor_train" / f"checkpoint-{n}")
    d = discover(tmp_path)
    assert (d.layout, d.steps) == ("roll", (5, 10, 15))


def test_verl(tmp_path: Path):
    for n in (10, 20, 30):
        _adapter(tmp_path / f"global_step_{n}" / "actor" / "lora_adapter")
        (tmp_path / f"global_step_{n}" / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"x")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("40")
    d = discover(tmp_path)
    assert (d.layout, d.steps) == ("verl", (10, 20, 30))
    assert _rel(d, tmp_path)[0] == "global_step_10/actor/lora_adapter"
    assert any("step 40" in n for n in d.notes)


def test_openrlhf_bin(tmp_path: Path):
    for n in (8, 16):
        _adapter(tmp_path / f"global_step{n}_hf", weights="adapter_model.bin")
    d = discover(tmp_path)
    assert (d.layout, d.steps) == ("openrlhf", (8, 16))
    assert d.checkpoints[0].weights.name == "adapter_model.bin"


def test_nemo_rl_skips_tmp_and_reads_training_info(tmp_path: Path):
    # The older policies' place for the adapter (weights/), and a save in progress (tmp_step_6).
    for n in (2, 4):
        _adapter(tmp_path / f"step_{n}" / "policy" / "weights")
    (tmp_path / "step_4" / "training_info.json").write_text(json.dumps({"total_steps": 4, "current_epoch": 0}))
    _adapter(tmp_path / "tmp_step_6" / "policy" / "weights")
    d = discover(tmp_path)
    assert (d.layout, d.steps) == ("nemo-rl", (2, 4))
    assert d.checkpoints[1].step_source == "training_info.json total_steps"


def test_plain_folders_with_numbers(tmp_path: Path):
    for name in ("ckpt_0010", "ckpt_0020", "ckpt_0030"):
        _adapter(tmp_path / name)
    d = discover(tmp_path)
    assert (d.layout, d.steps) == ("plain", (10, 20, 30))


def test_named_adapter_subfolder(tmp_path: Path):
    for n in (1, 2):
        _adapter(tmp_path / f"checkpoint-{n}" / "policy")
    d = discover(tmp_path, adapter_name="policy")
    assert d.steps == (1, 2) and d.checkpoints[0].path.name == "policy"
    d = discover(tmp_path)  # found without the name too, with a note
    assert d.steps == (1, 2) and any("subfolder policy/" in n for n in d.notes)


def test_checkpoint_without_adapter_is_skipped_with_a_note(tmp_path: Path):
    _adapter(tmp_path / "checkpoint-1")
    _adapter(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-3" / "global_step3").mkdir(parents=True)  # ZeRO shards only
    d = discover(tmp_path)
    assert d.steps == (1, 2)
    assert any("checkpoint-3" in n for n in d.notes)


def test_duplicate_steps(tmp_path: Path):
    _adapter(tmp_path / "checkpoint-1")
    _adapter(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    with pytest.raises(LayoutError, match="two checkpoints for step 1"):
        discover(tmp_path)


def test_root_is_a_single_checkpoint(tmp_path: Path):
    ckpt = _adapter(tmp_path / "checkpoint-5")
    with pytest.raises(LayoutError, match="single adapter"):
        discover(ckpt)


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_bad_roots(tmp_path: Path, kind: str):
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("hi")
    elif kind == "empty":
        path.mkdir()
    with pytest.raises(InputNotFoundError):
        discover(path)


def test_nothing_found_lists_layouts(tmp_path: Path):
    (tmp_path / "logs").mkdir()
    with pytest.raises(
        LayoutError, match=r"tried layouts: trl checkpoint-N.*verl.*OpenRLHF.*NeMo-RL.*--checkpoint"
    ):
        discover(tmp_path)


def test_explicit_lists(tmp_path: Path):
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    d = from_explicit([b, a / "adapter_model.safetensors"], [20, 10])
    assert d.layout == "explicit" and d.steps == (10, 20) and d.checkpoints[0].path == a
    with pytest.raises(LayoutError, match="one --step per --checkpoint"):
        from_explicit([a, b], [1])
    with pytest.raises(LayoutError, match="pass --step"):
        from_explicit([a, b], None)
    with pytest.raises(LayoutError, match="two checkpoints for step 3"):
        from_explicit([a, b], [3, 3])
    with pytest.raises(InputNotFoundError):
        from_explicit([tmp_path / "nope"], [1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an adapter folder"):
        from_explicit([tmp_path / "empty"], [1])
    c = _adapter(tmp_path / "checkpoint-30")
    assert from_explicit([c], None).steps == (30,)


def test_layouts_imports_no_torch():
    """The layouts package is stdlib-only so discovery stays light: check its imports statically."""
    package = Path(__file__).parents[1] / "nextrap"
    modules = set()
    for path in [*(package / "layouts").glob("*.py"), package / "formats" / "verl_shards.py", package / "formats" / "pickle_header.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name for a in node.names if a.name.startswith("nextrap.")}
                modules |= {a.name.split(".")[0] for a in node.names if not a.name.startswith("nextrap.")}
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules.add(node.module)
    modules = {m for m in modules if not m.startswith("nextrap.layouts")}  # the package's own modules
    assert modules <= {
        "__future__",
        "json",
        "os",
        "re",
        "collections.abc",
        "dataclasses",
        "pathlib",
        "nextrap.errors",
        "nextrap.util.files",  # safe reads of trainer records: stdlib-only as well
        "nextrap.formats.peft",  # PEFT's file names and rules: stdlib-only as well
        "nextrap.formats.verl_shards",  # verl's shard files: stdlib-only as well
        "nextrap.formats.pickle_header",
        "io",
        "pickle",
        "zipfile",
        "typing",
    }, modules


def test_a_given_step_that_is_not_a_whole_number_is_one_error():
    from nextrap.errors import LayoutError
    from nextrap.layouts.base import given_step

    for bad in (float("inf"), float("-inf"), float("nan"), 2.5, -1, 10**13, True):
        with pytest.raises(LayoutError, match="--step"):
            given_step(bad, Path("ckpt"))
    assert given_step(7.0, Path("ckpt")) == 7
