"""Progress reporting for long loops: silent in the library, a tqdm bar when the caller asks for one."""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["Progress", "no_progress", "progress_bar"]

# Wraps a sequence of work items with a description; returns something iterable over the same items.
Progress = Callable[[Sequence, str], Sequence]


def no_progress(items: Sequence, desc: str) -> Sequence:
    return items


def progress_bar(enabled: bool) -> Progress:
    """A :data:`Progress`: a tqdm bar on stderr when ``enabled``, the identity otherwise."""
    if not enabled:
        return no_progress

    def wrap(items: Sequence, desc: str) -> Sequence:
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)

    return wrap
