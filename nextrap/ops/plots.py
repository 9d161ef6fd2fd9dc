"""PNG plots for ``backtest --plot`` and ``inspect --plot`` (matplotlib, an optional extra)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nextrap.errors import ConfigError, OutputExistsError
from nextrap.ops.backtest import BacktestResult
from nextrap.ops.diagnostics import Diagnostics
from nextrap.output.atomic import atomic_file, check_outside_inputs

__all__ = ["DIAGNOSTIC_PLOTS", "check_plot_folder", "check_plot_path", "plot_backtest", "plot_diagnostics", "require_matplotlib"]

DIAGNOSTIC_PLOTS = ("rank1_share.png", "coefficients.png")


def check_plot_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = True) -> Path:
    """Fail before any work unless ``path`` names a ``.png`` file whose parent is (or can be) a folder,
    outside ``inputs``, and not an existing file unless ``overwrite``."""
    path = Path(path)
    check_outside_inputs(path, inputs)
    if path.is_dir():
        raise OutputExistsError(
            f"{path}: is a folder; --plot takes a file name such as {path / 'backtest.png'}"
        )
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: plots are PNG files; give a name ending in .png")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(
                    f"{path}: {parent} is a file, not a folder; choose another place for the plot"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "Permission denied (cannot write there)", str(parent))
            break
    if not overwrite and (path.exists() or path.is_symlink()):
        raise OutputExistsError(f"{path}: already exists; choose another file name or pass --overwrite")
    return path


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plots need matplotlib, which is not installed: pip install 'nextrap[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_backtest(result: BacktestResult, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Relative error (left) and cosine (right) against the held-out step, one line per method.

    ``path`` may not touch the run's files (:mod:`nextrap.util.inputs`), and an existing file is replaced only
    with ``overwrite``.
    """
    plt = require_matplotlib()
    path = Path(path)
    check_plot_path(path, result.inputs, overwrite)
    fig, (ax_err, ax_cos) = plt.subplots(1, 2, figsize=(10, 4))
    for method, rows in result.summary().items():
        steps = [r["step"] for r in rows]
        ax_err.plot(steps, [r["relative_error"] for r in rows], marker="o", label=method)
        ax_cos.plot(steps, [r["cosine"] for r in rows], marker="o", label=method)
    ax_err.axhline(1.0, color="grey", ls=":", label="stay")
    ax_err.set(xlabel="held-out step", ylabel="relative error (stay = 1)", title="prediction error")
    ax_cos.set(xlabel="held-out step", ylabel="cosine with the true update", title="direction")
    ax_err.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(plt, fig, path, result.inputs, overwrite)
    return path


def plot_diagnostics(diag: Diagnostics, folder: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """``rank1_share.png`` (median share per module kind along the run) and ``coefficients.png`` in ``folder``.

    ``folder`` may not touch the run's files (:mod:`nextrap.util.inputs`); existing plots in it are replaced only
    with ``overwrite``.
    """
    plt = require_matplotlib()
    folder = Path(folder)
    check_plot_folder(folder, diag.inputs, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    steps = list(diag.steps)
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, names in sorted(diag.kinds().items()):
        med = [sorted(diag.share[n][k] for n in names)[len(names) // 2] for k in range(len(steps))]
        ax.plot(steps, med, label=kind)
    ax.axhline(1 / max(1, diag.rank), color="grey", ls=":", label="1/r")
    ax.set(
        xlabel="step",
        ylabel="sigma_1^2 / sum sigma_i^2",
        title="rank-1 share of the update (median)",
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    share_path = folder / DIAGNOSTIC_PLOTS[0]
    _save(plt, fig, share_path, diag.inputs, overwrite)

    fig, ax = plt.subplots(figsize=(6, 4))
    for _kind, names in sorted(diag.kinds().items()):
        name = names[len(names) // 2]  # one representative module per kind
        curve = diag.coefficient[name]
        scale = max(abs(c) for c in curve) or 1.0
        ax.plot(steps, [c / scale for c in curve], label=f"{name} (R^2 {diag.line_r2[name]:.2f})")
    ax.set(xlabel="step", ylabel="u^T dW_t v (scaled to max 1)", title="rank-1 coefficient along the run")
    ax.legend(fontsize=6)
    fig.tight_layout()
    coef_path = folder / DIAGNOSTIC_PLOTS[1]
    _save(plt, fig, coef_path, diag.inputs, overwrite)
    return [share_path, coef_path]


def check_plot_folder(folder: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = True) -> Path:
    """Fail before any work unless ``folder`` can take the diagnostics' PNG files (see :func:`plot_diagnostics`)."""
    folder = Path(folder)
    check_outside_inputs(folder, inputs)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder}: is a file; --plot takes a folder for the PNG files")
    taken = [name for name in DIAGNOSTIC_PLOTS if (folder / name).exists() or (folder / name).is_symlink()]
    if taken and not overwrite:
        raise OutputExistsError(f"{folder / taken[0]}: already exists; choose another folder or pass --overwrite")
    return folder


def _save(plt: Any, fig: Any, path: Path, inputs: Iterable[str | os.PathLike], overwrite: bool) -> None:
    try:
        with atomic_file(path, inputs, overwrite) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
