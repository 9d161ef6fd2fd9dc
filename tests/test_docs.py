"""The documentation's claims are held by tests: every code block of the README and docs/ runs, in order,
every example script runs, and every relative link of the documentation leads somewhere.

Blocks run per file, in that file's order, in a fresh temporary folder that holds what the blocks expect
to find there: a small planted TRL run at ``runs/grpo-qwen`` (10 checkpoints, steps 10..100) and, for
``examples/verl_resume.md``, a verl run at ``checkpoints/grpo-qwen`` saved with ``lora_alpha: 0`` as some
verl versions save it. ``nextrap`` on the blocks' PATH is this tree's CLI (``python -m nextrap``), the
reference policy's cache is a temporary folder shared by the session, and one thread is used.

A block that cannot run here is preceded by ``<!-- no-run: REASON -->`` (its last non-blank line before
the fence); the reason is required. Only ``bash`` and ``python`` blocks run; ``yaml``, ``text`` and
unlabelled blocks are shown, not run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nextrap.testing.synthetic import write_synthetic_run

from .conftest import STEPS, TINY_SHAPES, TINY_SPEC

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "examples" / "verl_resume.md",
]
RUN_LANGUAGES = ("bash", "python")
NO_RUN = re.compile(r"^<!--\s*no-run:(?P<reason>.*?)-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
BLOCK_TIMEOUT_S = 900


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    no_run: str | None  # the marker's reason (possibly empty); None: the block runs

    @property
    def where(self) -> str:
        return f"{_doc_id(self.path)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with the no-run marker that precedes each (if any)."""
    lines = path.read_text().splitlines()
    blocks, marker, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        if m := NO_RUN.match(line.strip()):
            marker = m["reason"].strip()
        elif m := FENCE.match(line):
            start, lang = i, m["lang"]
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            if i == len(lines):
                raise AssertionError(f"{_doc_id(path)}:{start + 1}: code block never closed")
            blocks.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : i]) + "\n", marker))
            marker = None
        elif line.strip() and marker is not None:
            raise AssertionError(
                f"{_doc_id(path)}:{i + 1}: a no-run marker must come right before a code block"
            )
        i += 1
    return blocks


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- fast checks of the documentation's shape --------------------------------------------------------


def test_every_skipped_block_says_why_and_every_marker_skips_a_runnable_block():
    runnable = 0
    for path in DOC_FILES:
        for block in code_blocks(path):
            if block.no_run is not None:
                assert block.no_run, f"{block.where}: <!-- no-run: ... --> needs a reason"
                assert block.lang in RUN_LANGUAGES, (
                    f"{block.where}: a no-run marker on a {block.lang!r} block"
                )
            elif block.lang in RUN_LANGUAGES:
                runnable += 1
    assert runnable >= 15, f"only {runnable} runnable blocks found: is the parser still reading the docs?"


def test_the_parser_sees_markers_fences_and_languages(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```bash\necho one\n```\n\n<!-- no-run: needs the Hub -->\n```python\nprint(2)\n```\n"
        "```yaml\na: 1\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b.line, b.lang, b.code, b.no_run) for b in blocks] == [
        (3, "bash", "echo one\n", None),
        (8, "python", "print(2)\n", "needs the Hub"),
        (11, "yaml", "a: 1\n", None),
    ]


DATED = [
    "this round", "today's", "the new default", "still at", "was the default", "before this version",
    "still running", "not yet run", "when this was written", "this branch", "the lead's",
]  # fmt: skip


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250, "README.md is over 250 lines: move the detail to docs/"


def test_no_page_dates_itself_to_a_development_round():
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += sorted((ROOT / "benchmarks" / "results").rglob("README.md"))
    found = {
        str(page.relative_to(ROOT)): [word for word in DATED if word in page.read_text().lower()] for page in pages
    }
    found = {page: words for page, words in found.items() if words}
    assert not found, f"pages date themselves to a development round: {found}; state facts with their commit"


OUTPUT_OPTION = re.compile(r"(?:^|\s)(?:-o|--output)\s+(?P<path>[^\s;&|]+)")


def test_blocks_copied_in_order_across_pages_never_write_the_same_output():
    # A reader copies blocks from several pages into one folder: two blocks writing one output would
    # collide ("already exists"). One block may write an output twice (to show the refusal).
    owner: dict[str, str] = {}
    clashes = []
    for path in DOC_FILES:
        for block in code_blocks(path):
            if block.lang != "bash" or block.no_run is not None:
                continue
            for target in {m["path"].rstrip("/") for m in OUTPUT_OPTION.finditer(block.code)}:
                if target in owner:
                    clashes.append(f"{block.where} and {owner[target]} both write {target}")
                owner.setdefault(target, block.where)
    assert len(owner) >= 10, f"only {len(owner)} outputs found: is the pattern still matching -o?"
    assert not clashes, "\n".join(clashes)


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6}\s+(.*)$", line)):
            slug = _slug(m[1])
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_every_relative_link_and_anchor_of_the_documentation_resolves():
    pages = [*DOC_FILES, ROOT / "benchmarks" / "README.md"]
    broken = []
    for page in pages:
        fenced = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
            if fenced:
                continue
            for m in LINK.finditer(line):
                target = m["target"]
                if re.match(r"^[a-z]+:", target):
                    continue  # https:, mailto:
                file, _, anchor = target.partition("#")
                dest = (page.parent / file).resolve() if file else page
                if not dest.exists():
                    broken.append(f"{_doc_id(page)}:{number}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{_doc_id(page)}:{number}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_listed_in_the_index_and_reachable_from_the_readme():
    index = (ROOT / "docs" / "index.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name == "index.md":
            continue
        assert f"]({page.name}" in index, f"docs/index.md does not list {page.name}"
        assert f"](docs/{page.name}" in readme, f"README.md has no link to docs/{page.name}"


# -- the blocks run ----------------------------------------------------------------------------------


def _environment(folder: Path, cache: Path) -> dict[str, str]:
    """The blocks' environment: this tree's nextrap first on PATH and sys.path, one thread, no network."""
    shims = folder.parent / f"{folder.name}-bin"
    shims.mkdir()
    shim = shims / "nextrap"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m nextrap "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{shims}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        NEXTRAP_CACHE=str(cache),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        MPLBACKEND="Agg",
    )
    return env


def _set_up(folder: Path) -> None:
    """What the blocks expect to find: a planted TRL run, and a verl run saved with lora_alpha 0."""
    write_synthetic_run(folder / "runs" / "grpo-qwen", STEPS, TINY_SHAPES, TINY_SPEC)
    verl = write_synthetic_run(
        folder / "checkpoints" / "grpo-qwen", STEPS, TINY_SHAPES, TINY_SPEC, layout="verl"
    )
    for config in verl.glob("global_step_*/actor/lora_adapter/adapter_config.json"):
        config.write_text(config.read_text().replace(f'"lora_alpha": {TINY_SPEC.alpha}', '"lora_alpha": 0'))


def _run_block(block: Block, folder: Path, env: dict[str, str]) -> None:
    command = (
        ["bash", "-e", "-o", "pipefail", "-c", block.code]
        if block.lang == "bash"
        else [sys.executable, "-c", block.code]
    )
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"{block.where}: the {block.lang} block failed (exit {done.returncode})\n--- block:\n{block.code}"
        f"--- stdout:\n{done.stdout[-3000:]}\n--- stderr:\n{done.stderr[-3000:]}"
    )


def _runnable(path: Path) -> list[Block]:
    return [b for b in code_blocks(path) if b.lang in RUN_LANGUAGES and b.no_run is None]


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOC_FILES if _runnable(p)], ids=_doc_id)
def test_the_code_blocks_of_a_page_run_in_order(path: Path, tmp_path: Path, _reference_cache_folder: Path):
    blocks = _runnable(path)
    folder = tmp_path / "work"
    folder.mkdir()
    _set_up(folder)
    env = _environment(folder, _reference_cache_folder)
    for block in blocks:
        _run_block(block, folder, env)


def test_the_verl_fixture_is_what_nextrap_refuses(tmp_path: Path):
    # The verl page's first block exists because such a run is refused; if nextrap ever read it, the page
    # (and this fixture) would be out of date.
    _set_up(tmp_path)
    env = _environment(tmp_path, tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "nextrap", "scan", "checkpoints/grpo-qwen"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "lora_alpha is 0" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# -- the example scripts run -------------------------------------------------------------------------

# Each script with the arguments that keep it short, and a line its output must contain. A new script in
# examples/ without an entry here fails the test below.
EXAMPLES = {
    "python_api.py": (["OUT"], "virtual step"),
    "end_to_end.py": (["OUT", "--steps", "20"], "accuracy after 20 + 20 trained steps"),
    "live_loop.py": ([], "jumped to virtual step"),
    "trl_grpo_callback.py": (["OUT"], "jumped at step"),
}


def test_every_example_script_has_an_entry():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_an_example_script_runs(script: str, tmp_path: Path, _reference_cache_folder: Path):
    if script == "trl_grpo_callback.py":
        pytest.importorskip("trl")
    args, expected = EXAMPLES[script]
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    env = _environment(tmp_path / "work", _reference_cache_folder)
    (tmp_path / "work").mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=tmp_path / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, f"examples/{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert expected in done.stdout, f"examples/{script} did not print {expected!r}:\n{done.stdout[-3000:]}"


# -- the generated CLI reference ---------------------------------------------------------------------


def test_the_cli_reference_is_what_the_cli_says():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    gen_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_cli)
    fresh = gen_cli.render()
    assert "## `nextrap extrapolate`" in fresh and "--rank-policy" in fresh
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == fresh, (
        "docs/cli.md is out of date with the CLI: run `python docs/gen_cli.py` and commit it"
    )


# -- one version ---------------------------------------------------------------------------------------


def test_the_version_is_written_once_and_the_metadata_reads_it():
    # pyproject.toml takes the version from nextrap/version.py ([tool.setuptools.dynamic]); setuptools'
    # own reading of the pyproject (what `pip install` puts into the metadata) must give that number.
    from setuptools.config.pyprojecttoml import read_configuration

    import nextrap
    from nextrap.version import __version__

    project = read_configuration(ROOT / "pyproject.toml", expand=True)["project"]
    assert project["version"] == __version__ == nextrap.__version__
    assert "version" in project["dynamic"]
    assert not re.search(r'(?m)^version\s*=\s*"', (ROOT / "pyproject.toml").read_text()), (
        "a hand-kept version"
    )
    # The installed metadata, where the installed nextrap is this tree (an editable install elsewhere, as
    # on machines with several worktrees, has its own tree's version).
    dist = importlib.metadata.distribution("nextrap")
    origin = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    if origin.removeprefix("file://") == str(ROOT):
        assert dist.version == __version__, "the installed metadata lags nextrap/version.py: pip install -e ."


# -- the API reference ---------------------------------------------------------------------------------


def test_the_api_reference_is_what_the_code_says():
    """docs/api.md is generated from nextrap.__all__ and the docstrings; every public name has one."""
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    assert gen_api.undocumented() == [], "public names or methods without a docstring"
    fresh = gen_api.render()
    import nextrap

    assert all(f"## `{name}`" in fresh for name in nextrap.__all__ if name != "__version__")
    assert "Returns:" in fresh.split("## `extrapolate`")[1].split("## `")[0]  # parameters and returns documented
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == fresh, "docs/api.md is out of date with the code: run `python docs/gen_api.py` and commit it"
