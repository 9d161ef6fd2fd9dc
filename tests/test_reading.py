"""Reading a run's factors: one reader per checkpoint, pread into place, one finite check per chunk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nextrap
from nextrap.errors import CheckpointError
from nextrap.run.adapters import FileReader, ReaderPool, open_adapter
from nextrap.testing.synthetic import write_synthetic_run

from .conftest import STEPS, TINY_SHAPES, TINY_SPEC


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_file_reader_reads_what_safetensors_reads(tmp_path: Path, dtype: torch.dtype):
    run = write_synthetic_run(tmp_path / "run", STEPS[:3], TINY_SHAPES, TINY_SPEC, dtype)
    ref = nextrap.open_run(run, verify=False).refs[-1]
    expected = load_file(str(ref.weights))
    with open_adapter(ref) as reader:
        assert isinstance(reader, FileReader)
        assert sorted(reader.keys()) == sorted(expected)
        for key, tensor in expected.items():
            got = reader.get(key, dtype=None)
            assert got.dtype == dtype and torch.equal(got, tensor), key
            into = torch.empty(tensor.shape, dtype=torch.float32)
            reader.read_into(key, into)
            assert torch.equal(into, tensor.float()), key


def test_factors_match_the_tensors_whatever_the_chunking_and_pool_size(tiny_run: Path):
    traj = nextrap.open_run(tiny_run, verify=False)
    names = [n for n, m in traj.modules.items() if m.shape == next(iter(traj.modules.values())).shape]
    full_B, full_A = traj.load_factors(names, torch.device("cpu"))
    for k, ref in enumerate(traj.refs):
        tensors = load_file(str(ref.weights))
        for i, name in enumerate(names):
            m = traj.modules[name]
            assert torch.equal(full_B[i, k], tensors[m.b_key].float() * m.scaling)
            assert torch.equal(full_A[i, k], tensors[m.a_key].float())
    # a pool smaller than the run (files closed and reopened) and the prefetching iterator agree
    small = nextrap.open_run(tiny_run, verify=False)
    object.__setattr__(small, "readers", ReaderPool(limit=2))
    chunks = [names[:1], names[1:]]
    got = list(small.iter_factors(chunks, torch.device("cpu"), indices=[0, 3, 5]))
    assert [g[0] for g in got] == chunks
    B = torch.cat([g[1] for g in got])
    assert torch.equal(B, full_B[:, [0, 3, 5]])
    assert len(small.readers._open) <= 2


def test_an_inf_is_named_with_its_key_and_step_and_the_check_can_be_turned_off(tiny_run: Path):
    path = tiny_run / "checkpoint-40" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if k.endswith("lora_A.weight"))[0]
    tensors[key][1, 2] = float("inf")
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    traj = nextrap.open_run(tiny_run, verify=False)
    name = next(n for n, m in traj.modules.items() if m.a_key == key)
    with pytest.raises(CheckpointError, match=r"contains Inf") as err:
        traj.load_factors([name], torch.device("cpu"))
    assert key in str(err.value) and "step 40" in str(err.value)
    # forced off, the same chunk loads (the pass after check_run skips the check it already made)
    _, A = traj.load_factors([name], torch.device("cpu"), check_finite=False)
    assert torch.isinf(A).any()


def test_a_file_truncated_after_its_header_was_read_is_one_line(tiny_run: Path):
    traj = nextrap.open_run(tiny_run, verify=False)
    groups = list(traj.shape_groups().values())
    for group in groups:  # every reader opened, its header read
        traj.load_factors(group, torch.device("cpu"))
    path = traj.refs[2].weights
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 64])  # the last tensor's bytes are cut
    with pytest.raises(CheckpointError, match=r"checkpoint-30.*ends inside tensor .* at step 30"):
        for group in groups:
            traj.load_factors(group, torch.device("cpu"))
    # opened afresh, the file's header no longer matches its size: the library says what is wrong
    with pytest.raises(CheckpointError, match="corrupt safetensors file at step 30"):
        for group in groups:
            nextrap.open_run(tiny_run, verify=False).load_factors(group, torch.device("cpu"))


@pytest.mark.gpu
def test_factors_on_cuda_equal_the_cpu_ones(tiny_run: Path):
    traj = nextrap.open_run(tiny_run, verify=False)
    chunks = list(traj.shape_groups().values())
    cpu = [B for _, B, _ in traj.iter_factors(chunks, torch.device("cpu"))]
    gpu = [B for _, B, _ in traj.iter_factors(chunks, torch.device("cuda"))]
    for a, b in zip(cpu, gpu, strict=True):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())
    checked = nextrap.open_run(tiny_run, device=torch.device("cuda")).check
    assert checked.distances == pytest.approx(nextrap.open_run(tiny_run).check.distances, rel=1e-5)
