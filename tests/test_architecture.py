"""Imports point one way: each module may import only modules listed before it here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "nextrap"

# Low to high. A module may import (at top level or inside a function) only modules above it.
ORDER = [
    "version",
    "lazy",
    "errors",
    "validate",
    "files",
    "inputs",
    "threads",
    "peft_format",
    "memory",
    "cli_spec",
    "cli_support",
    "report",
    "progress",
    "devices",
    "atomic",
    "pickle_header",
    "shard_format",
    "layouts.base",
    "layouts.trl",
    "layouts.ms_swift",
    "layouts.verl",
    "layouts.openrlhf",
    "layouts.nemo_rl",
    "layouts.roll",
    "layouts.plain",
    "layouts.discovery",
    "layouts",
    "headers",
    "run_headers",
    "merge",
    "shard_reader",
    "adapters",
    "lowrank",
    "trajectory",
    "runs",
    "predictors.base",
    "predictors.config",
    "predictors.registry",
    "options",
    "predictors.next_fit",
    "predictors.frames",
    "predictors.next",
    "predictors.linear",
    "predictors.relex",
    "predictors.combined",
    "predictors",
    "backtest",
    "trainer_checkpoint",
    "diagnostics",
    "truncate",
    "writers",
    "plots",
    "extrapolate",
    "card",
    "hub",
    "callbacks",
    "synthetic",
    "demo",
    "__init__",
    "reference.stats",
    "reference.tasks",
    "reference.chat",
    "reference.model",
    "reference.policy",
    "reference.warmstart",
    "reference.weights",
    "reference.smollm2",
    "reference.grpo",
    "reference.evaluation",
    "reference.endtoend",
    "reference.cycles",
    "reference.protocols",
    "reference.demo",
    "reference",
    "reference.cli",
    "integrations",
    "integrations.transformers",
    "cli",
    "__main__",
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts)


def _nextrap_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "nextrap":
            # "from nextrap import lowrank" names a submodule; anything else comes from __init__.
            for alias in node.names:
                is_module = (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir()
                found.add(alias.name if is_module else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nextrap."):
            found.add(node.module[len("nextrap.") :])
        elif isinstance(node, ast.Import):
            found |= {a.name[len("nextrap.") :] for a in node.names if a.name.startswith("nextrap.")}
    return found


def test_every_module_is_placed():
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules <= set(ORDER), f"add new modules to ORDER: {sorted(modules - set(ORDER))}"


def test_no_back_edges():
    rank = {name: i for i, name in enumerate(ORDER)}
    problems = []
    for path in PACKAGE.rglob("*.py"):
        me = _module_name(path)
        for dep in _nextrap_imports(path):
            if dep not in rank or rank[dep] >= rank[me]:
                problems.append(f"{me} imports {dep}")
    assert not problems, problems


def test_library_never_imports_heavy_optional_modules_at_top_level():
    """transformers and huggingface_hub are imported inside the functions that need them.

    The bundled reference trainer and the framework integrations are exempt: they are built on
    transformers by design, and nothing in the library imports them (the CLI does, inside commands).
    """
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name in ("reference", "integrations"):
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
