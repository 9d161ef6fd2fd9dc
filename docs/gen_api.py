"""Write docs/api.md, the Python API reference, from ``nextrap.__all__`` and the objects' own docstrings.

    python docs/gen_api.py            # regenerate docs/api.md after changing a public name or its docstring
    python docs/gen_api.py --check    # exit 1 when docs/api.md is not what the code says

Functions get their signature and docstring; classes their signature, docstring and public methods and
properties (signature and docstring each); exceptions their base classes and docstring. Every name in
``nextrap.__all__`` is documented, in that order; ``tests/test_docs.py`` fails when the committed file
differs from a fresh generation, or when a public function or class has no docstring.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "api.md"
HEADER = """# Python API reference

Generated from the code by `python docs/gen_api.py`; do not edit by hand. Everything here is importable
from the top-level package (`import nextrap`; `nextrap.extrapolate(...)`), and only these names are the
public API: modules may move, these names stay. The [guide](guide.md) shows them in use.
"""


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    text = re.sub(r"<function (\w+) at 0x[0-9a-f]+>", r"\1", text)  # defaults that are functions: their name
    return text.replace("'", "")  # postponed annotations are strings: drop the quotes


def _doc(obj: object) -> str:
    return inspect.getdoc(obj) or ""


def _members(cls: type) -> list[str]:
    """Public methods and properties defined on ``cls`` itself (not inherited from object or a dataclass base)."""
    names = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property | staticmethod | classmethod) or inspect.isfunction(value):
            names.append(name)
    return names


def _section(name: str, obj: object) -> str:
    module = getattr(obj, "__module__", "")
    if isinstance(obj, type) and issubclass(obj, BaseException):
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        return f"## `{name}`\n\nException ({bases}), from `{module}`.\n\n{_doc(obj)}\n"
    if isinstance(obj, type):
        parts = [f"## `{name}`\n", f"```text\nclass {name}{_signature(obj)}\n```\n", f"From `{module}`.\n", _doc(obj) + "\n"]
        for member in _members(obj):
            value = vars(obj)[member]
            if isinstance(value, property):
                parts.append(f"### `{name}.{member}` (property)\n\n{_doc(value)}\n")
            else:
                fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
                parts.append(f"### `{name}.{member}`\n\n```text\n{member}{_signature(fn)}\n```\n\n{_doc(fn)}\n")
        return "\n".join(parts)
    if callable(obj):
        return f"## `{name}`\n\n```text\n{name}{_signature(obj)}\n```\n\nFrom `{module}`.\n\n{_doc(obj)}\n"
    return f"## `{name}`\n\n`{obj!r}`\n"


def render() -> str:
    import nextrap

    names = [n for n in nextrap.__all__ if n != "__version__"]
    index = ", ".join(f"[`{n}`](#{n.lower()})" for n in names)
    body = [_section(n, getattr(nextrap, n)) for n in names]
    return "\n".join([HEADER, index + "\n", *body])


def undocumented() -> list[str]:
    """Public functions and classes (and their public methods) without a docstring."""
    import nextrap

    missing = []
    for name in nextrap.__all__:
        obj = getattr(nextrap, name)
        if (callable(obj) or isinstance(obj, type)) and not _doc(obj):
            missing.append(name)
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            for member in _members(obj):
                value = vars(obj)[member]
                fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
                if not _doc(fn):
                    missing.append(f"{name}.{member}")
    return missing


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
