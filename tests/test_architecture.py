"""The architecture as contracts: the layers import only downwards, and the light layers stay light.

The layers are folders of ``nextrap/`` (docs/architecture.md); their order and the torch-free rule are
import-linter contracts in ``pyproject.toml`` (``[tool.importlinter]``), which follow indirect imports
and imports inside functions too. These tests run them, and check that every module sits in a layer.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "nextrap"


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    return [name.strip() for layer in layers for name in re.split(r"[|:]", layer)]


def test_the_import_contracts_hold():
    """lint-imports: no layer imports one above it (directly or through others); formats/ and layouts/
    import no torch, click, transformers or peft."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 2


def test_every_module_sits_in_a_layer():
    """A new top-level module or folder must be placed in the layers contract, or nothing checks it."""
    placed = {name.removeprefix("nextrap.") for name in _layers()}
    found = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    found = {f for f in found if (PACKAGE / f).is_dir() or (PACKAGE / f"{f}.py").is_file()}
    assert found - {"__init__"} <= placed, f"place these in pyproject's layers contract: {sorted(found - placed - {'__init__'})}"


def test_library_never_imports_heavy_optional_modules_at_top_level():
    """transformers and huggingface_hub are imported inside the functions that need them.

    The bundled reference trainer and the transformers callback are exempt: they are built on
    transformers by design, and nothing in the library imports them (the CLI does, inside commands).
    """
    exempt = {PACKAGE / "live" / "transformers.py"}
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "reference" or path in exempt:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"transformers", "huggingface_hub", "matplotlib"}, (
                    path,
                    name,
                )
