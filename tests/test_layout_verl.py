"""verl: the rank shards verl 0.9.1's own FSDPCheckpointManager wrote (tests/fixtures/verl-0.9.1), read
directly; the Megatron-bridge adapter; the merger's lora_adapter/; and what the error says otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nextrap
from nextrap.errors import CheckpointError, LayoutError
from nextrap.layouts import discover, from_explicit
from nextrap.ops.options import ExtrapolateOptions
from nextrap.predictors import NExtConfig
from nextrap.run.adapters import open_adapter
from nextrap.testing.synthetic import PlantSpec, planted_factors, write_synthetic_run

from .fixtures.write_verl_run import planted_shapes, tiny_llama_config

FIXTURE = Path(__file__).parent / "fixtures" / "verl-0.9.1" / "run"
STEPS = (10, 20, 30, 40)
SPEC = PlantSpec(rank=3, alpha=6.0, seed=0)  # what the fixture was written with (its README.md)
SHAPES = planted_shapes(layers=1)
SHORT_FIT = NExtConfig(epochs=60, patience=50)
WRITER = Path(__file__).parent / "fixtures" / "write_verl_run.py"


def _copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "verl-run"))


def _twin(tmp_path: Path) -> Path:
    """The same run saved as PEFT folders (TRL's layout): what the shards must read as."""
    return write_synthetic_run(tmp_path / "peft-run", STEPS, SHAPES, SPEC, torch.float32, "trl")


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 256)
    return folder


def test_the_shards_are_found_with_every_rank():
    d = discover(FIXTURE)
    assert (d.layout, d.steps, d.notes) == ("verl", STEPS, ())
    for ref in d.checkpoints:
        assert ref.format == "fsdp-shards" and ref.step_source == "folder name"
        assert [p.name for p in ref.shards] == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"]
        assert ref.path == FIXTURE / f"global_step_{ref.step}" / "actor"


def test_the_reader_puts_together_the_values_verl_was_given():
    # r = 3 splits each lora_A 2 + 1 rows over the two ranks (torch.chunk's uneven split).
    for ref in discover(FIXTURE).checkpoints:
        planted = planted_factors(SPEC, SHAPES, ref.step)
        with open_adapter(ref) as reader:
            assert len(reader.keys()) == 2 * len(SHAPES)
            for name, (B, A) in planted.items():
                assert torch.equal(reader.get(f"base_model.model.{name}.lora_A.weight"), A)
                assert torch.equal(reader.get(f"base_model.model.{name}.lora_B.weight"), B)


def test_scan_imports_no_torch_and_reads_like_the_peft_twin(tmp_path: Path):
    twin = _twin(tmp_path)
    probe = (
        "import json, sys\nimport nextrap\n"
        f"print(json.dumps(nextrap.scan({str(FIXTURE)!r})))\n"
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout
    summary, loaded = out.strip().splitlines()[-2:]
    assert loaded == "False"
    scanned, expected = json.loads(summary), nextrap.scan(twin)
    assert scanned["layout"] == "verl"
    for key in ("root", "layout", "checkpoint_paths", "notes"):
        scanned.pop(key), expected.pop(key)
    assert scanned == expected
    assert nextrap.open_run(FIXTURE).summary()["steps"] == list(STEPS)  # the torch path agrees


def test_backtest_and_extrapolate_equal_the_peft_twin(tmp_path: Path):
    twin = _twin(tmp_path)
    options = nextrap.BacktestOptions(predictor=SHORT_FIT, holdout=1)
    shards, folders = (nextrap.backtest(nextrap.open_run(r), options) for r in (FIXTURE, twin))
    assert shards.scores == folders.scores and shards.recommendation == folders.recommendation
    opts = ExtrapolateOptions(coefs=(1.0, 2.0), predictor=SHORT_FIT)
    out_s = nextrap.extrapolate(FIXTURE, tmp_path / "from-shards", opts)
    out_p = nextrap.extrapolate(twin, tmp_path / "from-folders", opts)
    for coef in (1.0, 2.0):
        a, b = (load_file(str(r.adapters[coef] / "adapter_model.safetensors")) for r in (out_s, out_p))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shards_report = out_s.report.inputs["checkpoints"][-1]
    assert [Path(s["path"]).name for s in shards_report["shards"]] == [p.name for p in discover(FIXTURE).checkpoints[-1].shards]
    assert all(len(s["sha256"]) == 64 for s in shards_report["shards"])


def _dense_from_shards(actor: Path) -> dict[str, torch.Tensor]:
    """``scaling * B @ A`` per module from verl's files with torch alone: each rank's local rows, concatenated."""
    import torch.distributed.tensor

    meta = json.loads((actor / "lora_train_meta.json").read_text())
    ranks = [torch.load(actor / f"model_world_size_2_rank_{r}.pt", weights_only=True) for r in range(2)]
    out = {}
    for key in ranks[0]:
        if ".lora_A." in key:
            name = key[len("base_model.model.") : -len(".lora_A.default.weight")]
            A = torch.cat([rank[key].to_local() for rank in ranks])
            B = torch.cat([rank[key.replace("lora_A", "lora_B")].to_local() for rank in ranks])
            out[name] = meta["lora_alpha"] / meta["r"] * B.double() @ A.double()
    return out


def test_the_output_is_a_peft_adapter_verl_can_start_from(tmp_path: Path):
    """PEFT's own forward pass with the written adapter == base + the expected update, merged by hand."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    res = nextrap.extrapolate(
        FIXTURE, tmp_path / "out", ExtrapolateOptions(coefs=(2.0,), method="next", predictor=SHORT_FIT)
    )
    torch.manual_seed(0)
    base, expected = LlamaForCausalLM(tiny_llama_config(1)).eval(), None
    expected = LlamaForCausalLM(tiny_llama_config(1)).eval()
    expected.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, dw in _dense_from_shards(FIXTURE / "global_step_40" / "actor").items():
            L, R = res.prediction.matrices[name]
            U, S, Vh = torch.linalg.svd(dw + 2.0 * (L.double() @ R.double()))
            module = expected.get_submodule(name)
            module.weight += ((U[:, :3] * S[:3]) @ Vh[:3]).to(module.weight.dtype)
    config = json.loads((res.output / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (3, 6, "CAUSAL_LM")
    # verl's _build_lora_module loads actor_rollout_ref.model.lora_adapter_path this way:
    model = PeftModel.from_pretrained(base, str(res.output), is_trainable=True).eval()
    ids = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected(ids).logits, rtol=1e-4, atol=1e-4)


def _evil_shard(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"base_model.model.x.lora_A.default.weight": Evil()}, path)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_malicious_pickle_in_a_shard_is_refused(tmp_path: Path, rank: int):
    # Rank 0's pickle is what scan reads (torch-free); rank 1's only the tensor reader (torch.load).
    run, marker = _copy(tmp_path), tmp_path / "PWNED"
    shard = run / "global_step_30" / "actor" / f"model_world_size_2_rank_{rank}.pt"
    _evil_shard(shard, marker)
    from click.testing import CliRunner

    from nextrap.cli.main import main

    commands = [["extrapolate", str(run), "-o", str(tmp_path / "out")]]
    if rank == 0:
        commands.append(["scan", str(run)])  # scan reads rank 0's header only
    for args in commands:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert len(line.splitlines()) == 1 and str(shard) in line and "system" in line and "never runs" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_missing_rank_shard_is_named(tmp_path: Path):
    run = _copy(tmp_path)
    (run / "global_step_20" / "actor" / "model_world_size_2_rank_1.pt").unlink()
    with pytest.raises(CheckpointError, match=r"model_world_size_2_rank_1\.pt missing at step 20"):
        discover(run)


def test_world_size_from_the_file_names_without_fsdp_config(tmp_path: Path):
    run = _copy(tmp_path)
    for step in STEPS:
        (run / f"global_step_{step}" / "actor" / "fsdp_config.json").unlink()
    assert all(len(ref.shards) == 2 for ref in discover(run).checkpoints)


def test_shards_without_lora_meta_get_the_verl_hint(tmp_path: Path):
    run = _copy(tmp_path)
    for step in STEPS:
        (run / f"global_step_{step}" / "actor" / "lora_train_meta.json").unlink()
    with pytest.raises(LayoutError) as err:
        discover(run)
    text = str(err.value)
    assert "saw step folders global_step_10/" in text and "without lora_train_meta.json" in text
    assert "lora_rank > 0" in text and "actor/lora_adapter/" in text and "\n" not in text


def test_megatron_engine_without_hf_adapter_gets_the_verl_hint(tmp_path: Path):
    for step in (5, 10):
        (tmp_path / f"global_step_{step}" / "actor" / "model" / "dist_ckpt").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"Megatron engine.*add hf_model to actor_rollout_ref\.actor\.checkpoint\.save_contents"):
        discover(tmp_path)


def test_megatron_bridge_adapter_five_folders_down(tmp_path: Path):
    for step in (5, 10):
        _adapter(tmp_path / f"global_step_{step}" / "actor" / "model" / "huggingface" / "adapter")
        (tmp_path / f"global_step_{step}" / "actor" / "model" / "dist_ckpt").mkdir()
    d = discover(tmp_path)
    assert (d.layout, d.steps, d.notes) == ("verl", (5, 10), ())


def test_the_mergers_lora_adapter_wherever_it_was_put(tmp_path: Path):
    for step in (10, 20):
        _adapter(tmp_path / "merged" / f"global_step_{step}" / "lora_adapter")
    d = discover(tmp_path / "merged")
    assert (d.layout, d.steps) == ("verl", (10, 20))
    for step in (10, 20):
        _adapter(tmp_path / "hf" / f"step{step}" / "lora_adapter")
    assert discover(tmp_path / "hf").steps == (10, 20)


def test_a_merger_adapter_beside_the_shards_is_read_instead_of_them(tmp_path: Path):
    run = _copy(tmp_path)
    _adapter(run / "global_step_40" / "actor" / "huggingface" / "lora_adapter")
    d = discover(run)
    assert d.checkpoints[-1].format == "peft" and d.checkpoints[0].format == "fsdp-shards"
    assert any("read the PEFT adapter in global_step_40/actor/huggingface/lora_adapter" in n for n in d.notes)


def test_latest_iteration_beyond_the_checkpoints_is_noted(tmp_path: Path):
    run = _copy(tmp_path)
    (run / "latest_checkpointed_iteration.txt").write_text("50")
    assert any("names step 50" in n for n in discover(run).notes)


def test_one_actor_folder_as_an_explicit_checkpoint():
    d = from_explicit([FIXTURE / "global_step_10" / "actor", FIXTURE / "global_step_20" / "actor"], None)
    assert d.steps == (10, 20) and d.checkpoints[0].format == "fsdp-shards"


@pytest.mark.slow
def test_the_emulated_writer_writes_what_verl_wrote(tmp_path: Path):
    """The tests' writer (no verl needed) against verl's own files: same names, JSON, pickled classes, values."""
    import pickletools
    import zipfile

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    subprocess.run([sys.executable, str(WRITER), str(tmp_path / "run"), "--steps", "10"], check=True, env=env, capture_output=True)
    ours, verls = tmp_path / "run" / "global_step_10" / "actor", FIXTURE / "global_step_10" / "actor"

    def names(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}

    def globals_of(path: Path) -> set[str]:
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}

    assert names(ours) == names(verls)
    for name in ("fsdp_config.json", "lora_train_meta.json"):
        assert json.loads((ours / name).read_text()) == json.loads((verls / name).read_text())
    for rank in range(2):
        assert globals_of(ours / f"model_world_size_2_rank_{rank}.pt") == globals_of(verls / f"model_world_size_2_rank_{rank}.pt")
    with open_adapter(from_explicit([ours], None).checkpoints[0]) as a, open_adapter(from_explicit([verls], None).checkpoints[0]) as b:
        assert a.keys() == b.keys() and all(torch.equal(a.get(k), b.get(k)) for k in a.keys())


@pytest.mark.slow
def test_three_ranks_bfloat16_and_verl_08_full_state(tmp_path: Path):
    """An odd world size (uneven pieces of every tensor), bfloat16, and shards holding the whole model."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = ["--steps", "10", "20", "--world-size", "3", "--dtype", "bfloat16", "--full-state"]
    subprocess.run([sys.executable, str(WRITER), str(tmp_path / "run"), *args], check=True, env=env, capture_output=True)
    d = discover(tmp_path / "run")
    assert d.steps == (10, 20) and all(len(ref.shards) == 3 for ref in d.checkpoints)
    assert nextrap.scan(tmp_path / "run")["dtype"] == "bfloat16"
    for ref in d.checkpoints:
        with open_adapter(ref) as reader:
            assert len(reader.keys()) == 2 * len(SHAPES)  # the base weights beside them are left out
            for name, (B, A) in planted_factors(SPEC, SHAPES, ref.step).items():
                for part, value in (("lora_A", A), ("lora_B", B)):
                    got = reader.get(f"base_model.model.{name}.{part}.weight", dtype=None)
                    assert got.dtype == torch.bfloat16 and torch.equal(got, value.to(torch.bfloat16))
