"""Property tests of the one rule about inputs and outputs (nextrap.util.inputs), against an independent model.

Hypothesis builds random trees of folders, files, hard links (a second name for a file) and symbolic links
(to folders, to files, to missing places, to themselves and to each other: loops), which give every
folder several names, as a bind mount would. A model of the tree resolves paths the way the kernel does,
on its own, and says whether an output location is, lies inside or contains an input. The rule must agree
exactly: refuse every unsafe output (and every path through a loop or a file), and no other.

A real bind mount (a second name the link-resolving code cannot see) is tested where a private mount
namespace can be made (``unshare -rm``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextrap.errors import UnsafeOutputError
from nextrap.util.inputs import check_outside_inputs

NAMES = ("a", "b", "c", "d")
REPO = Path(__file__).parents[1]


@dataclass
class Model:
    """Folders by path (tuples of names from the tree's root), each with its entries: ``name -> entry``.

    An entry is ``("dir",)``, ``("file", id)`` (hard links share the id) or ``("link", target path)``.
    """

    entries: dict[tuple[str, ...], dict[str, tuple]] = field(default_factory=lambda: {(): {}})
    files: int = 0

    def resolve(self, parts: tuple[str, ...]) -> tuple:
        """Where ``parts`` leads, as the kernel walks it: ``("dir", path)``, ``("file", id, folder)``,
        ``("missing", deepest folder reached)``, ``("notdir",)`` or ``("loop",)``."""
        here: tuple[str, ...] = ()
        todo, hops = list(parts), 0
        while todo:
            name = todo.pop(0)
            entry = self.entries[here].get(name)
            if entry is None:
                return ("missing", here)
            if entry[0] == "dir":
                here = (*here, name)
            elif entry[0] == "file":
                return ("file", entry[1], here) if not todo else ("notdir",)
            else:
                hops += 1
                if hops > 40:  # the kernel's limit; only a loop gets there in trees this small
                    return ("loop",)
                todo, here = [*entry[1], *todo], ()
        return ("dir", here)


def _above(place: tuple) -> set[tuple[str, ...]]:
    """Folders (by model path) that a resolved place lies inside, the tree's root included."""
    folder = place[1] if place[0] == "dir" else place[-1]
    chain = {folder[:i] for i in range(len(folder) + 1)}
    return chain - {place[1]} if place[0] == "dir" else chain


def _itself(place: tuple):
    return ("dir", place[1]) if place[0] == "dir" else ("file", place[1]) if place[0] == "file" else None


def unsafe(model: Model, output: tuple[str, ...], source: tuple[str, ...]) -> bool:
    """The model's verdict: the output (or the way to it) is refused, or it meets the input."""
    out, src = model.resolve(output), model.resolve(source)
    if out[0] in ("loop", "notdir"):
        return True
    if _itself(out) is not None and _itself(out) == _itself(src):
        return True  # is the input (same folder, or the same file under another name)
    if src[0] == "dir" and src[1] in _above(out):
        return True  # lies inside it
    return out[0] == "dir" and out[1] in _above(src)  # contains it


def _paths(depth: int = 4):
    return st.lists(st.sampled_from(NAMES), min_size=1, max_size=depth).map(tuple)


@st.composite
def trees(draw) -> Model:
    model = Model()
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(sorted(model.entries)))
        name = draw(st.sampled_from(NAMES))
        if name in model.entries[parent]:
            continue
        kind = draw(st.sampled_from(["dir", "dir", "dir", "file", "hardlink", "link", "link"]))
        files = [e for folder in model.entries.values() for e in folder.values() if e[0] == "file"]
        if kind == "hardlink" and not files:
            kind = "file"
        if kind == "dir":
            model.entries[parent][name] = ("dir",)
            model.entries[(*parent, name)] = {}
        elif kind == "file":
            model.files += 1
            model.entries[parent][name] = ("file", model.files)
        elif kind == "hardlink":
            model.entries[parent][name] = draw(st.sampled_from(files))
        else:
            target = draw(
                st.one_of(
                    st.sampled_from(sorted(model.entries)),  # a folder (a second name for it)
                    st.just((*parent, name)),  # itself: a loop
                    _paths(),  # anything: a file, another link (loops), a missing place
                )
            )
            model.entries[parent][name] = ("link", target)
    return model


def _build(model: Model, base: Path) -> None:
    first_name: dict[int, Path] = {}
    for folder in sorted(model.entries, key=len):
        here = base.joinpath(*folder)
        here.mkdir(exist_ok=True)
        for name, entry in sorted(model.entries[folder].items()):
            path = here / name
            if entry[0] == "dir":
                path.mkdir()
            elif entry[0] == "file":
                if entry[1] in first_name:
                    os.link(first_name[entry[1]], path)
                else:
                    path.write_text(f"file {entry[1]}")
                    first_name[entry[1]] = path
            else:
                path.symlink_to(base.joinpath(*entry[1]))


def _refused(output: Path, inputs: list[Path]) -> bool:
    try:
        check_outside_inputs(output, inputs)
    except UnsafeOutputError:
        return True
    return False


def _check_tree(data) -> None:
    model = data.draw(trees())
    output = data.draw(_paths(), label="output")
    sources = [p for p in data.draw(st.lists(_paths(), min_size=1, max_size=3), label="inputs")
               if model.resolve(p)[0] in ("dir", "file")]  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="nextrap-rules-"))
    try:
        _build(model, base / "t")
        expected = any(unsafe(model, output, s) for s in sources) or model.resolve(output)[0] in ("loop", "notdir")
        got = _refused(base / "t" / Path(*output), [base / "t" / Path(*s) for s in sources])
        assert got == expected, (model.entries, output, sources, [model.resolve(s) for s in sources])
    finally:
        shutil.rmtree(base, ignore_errors=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_output_is_refused_exactly_when_it_meets_an_input(data):
    _check_tree(data)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_an_output_is_refused_exactly_when_it_meets_an_input_many_trees(data):
    _check_tree(data)


_BIND = r"""
import sys
from pathlib import Path
from nextrap.output.atomic import check_output
from nextrap.errors import UnsafeOutputError
from nextrap.layouts import from_explicit
run, view = Path(sys.argv[1]), Path(sys.argv[2])
inputs = from_explicit([run / "checkpoint-10", run / "checkpoint-20"], None).input_paths
for out in (view / "checkpoint-999", view, view / "checkpoint-10" / "x"):
    try:
        check_output(out, True, inputs)
        print("accepted", out)
    except UnsafeOutputError:
        print("refused", out)
"""


def test_a_bind_mounted_view_of_the_run_is_the_run(tmp_path: Path):
    """Row 5: a bind mount gives the run a second name no link reveals; device and inode still match."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux)")
    run, view = tmp_path / "run", tmp_path / "view"
    for step in (10, 20):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "adapter_config.json").write_text('{"r": 2}')
        (run / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"\0" * 200)
    view.mkdir()
    script = f'mount --bind "$1" "$2" && exec "{sys.executable}" -c "$3" "$1" "$2"'
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(run), str(view), _BIND],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    if done.returncode != 0 and "mount" in done.stderr + done.stdout and "refused" not in done.stdout:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [f"refused {view / 'checkpoint-999'}", f"refused {view}",
                                          f"refused {view / 'checkpoint-10' / 'x'}"], done.stdout  # fmt: skip
