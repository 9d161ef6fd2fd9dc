"""The default thread count: explicit choices win, otherwise one thread per free core (never 0)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nextrap.errors import ConfigError
from nextrap.util.threads import choose_threads, free_cores


def test_free_cores_is_cores_minus_load_between_one_and_all():
    assert free_cores(16, 0.0) == 16
    assert free_cores(16, 3.6) == 12
    assert free_cores(2, 1.2) == 1
    assert free_cores(2, 6.0) == 1  # a busy machine gets one thread, never zero
    assert free_cores(8, -1.0) == 8


def test_explicit_choices_win_in_order():
    env = {"NEXTRAP_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert choose_threads(2, env).threads == 2
    assert choose_threads(None, env) == choose_threads(None, {"NEXTRAP_THREADS": "3"})
    assert choose_threads(None, env).threads == 3
    assert choose_threads(None, {"OMP_NUM_THREADS": "5"}).threads == 5
    auto = choose_threads(None, {})
    assert 1 <= auto.threads <= (os.cpu_count() or 1) and auto.source.startswith("free cores")
    with pytest.raises(ConfigError, match="NEXTRAP_THREADS"):
        choose_threads(None, {"NEXTRAP_THREADS": "0"})


def _torch_threads(args: list[str], env: dict[str, str]) -> int:
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom nextrap.cli.main import main\n"
        f"r = CliRunner().invoke(main, {args!r} + ['scan', '--help'])\nassert r.exit_code == 0, r.output\n"
        "import torch\nprint(torch.get_num_threads())"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NEXTRAP_THREADS")}
    out = subprocess.run([sys.executable, "-c", probe], env={**base, **env}, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_the_cli_sets_torch_threads_before_importing_torch():
    assert _torch_threads(["--threads", "2"], {}) == 2
    assert _torch_threads([], {"NEXTRAP_THREADS": "2"}) == 2
    assert _torch_threads([], {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}) == 1
    assert _torch_threads(["--threads", "1"], {"OMP_NUM_THREADS": "2"}) == 1
