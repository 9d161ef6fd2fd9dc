"""The pieces the output side is built from: PEFT's format rules, the method registry, CLI options from metadata."""

from __future__ import annotations

import dataclasses
import math

import click
import pytest
from click.testing import CliRunner

from nextrap.cli.support import options_from, values_for
from nextrap.formats import peft as peft_format
from nextrap.predictors import METHODS, REGISTRY, make_predictor
from nextrap.run.adapters import AdapterConfig
from nextrap.util.cli_spec import cli


def test_file_names_equal_peft_own_constants():
    from peft.utils import constants

    assert peft_format.CONFIG_NAME == constants.CONFIG_NAME
    assert peft_format.SAFETENSORS_NAME == constants.SAFETENSORS_WEIGHTS_NAME
    assert peft_format.BIN_NAME == constants.WEIGHTS_NAME


@pytest.mark.parametrize("rslora", [False, True])
def test_grown_config_keeps_every_scaling(tmp_path, rslora):
    # hand-computed: r 8 -> 9 at the same scaling s = alpha / r (or alpha / sqrt(r) with rsLoRA)
    cfg = AdapterConfig(
        path=tmp_path, raw={}, r=8, lora_alpha=16.0, use_rslora=rslora, rank_pattern={"q_proj": 4},
        alpha_pattern={"q_proj": 12.0},
    )
    modules = {"model.layers.0.self_attn.q_proj": (4, cfg.scaling_for("model.layers.0.self_attn.q_proj")),
               "model.layers.0.mlp.up_proj": (8, cfg.scaling_for("model.layers.0.mlp.up_proj"))}
    grown = cfg.grown(modules)
    root = math.sqrt if rslora else float
    assert grown["r"] == 9 and grown["lora_alpha"] == pytest.approx(16.0 / root(8) * root(9))
    after = AdapterConfig(
        path=tmp_path, raw={}, r=grown["r"], lora_alpha=grown["lora_alpha"], use_rslora=rslora,
        rank_pattern=grown["rank_pattern"], alpha_pattern=grown["alpha_pattern"],
    )
    for name, (rank, scaling) in modules.items():
        assert after.rank_for(name) == rank + 1
        assert after.scaling_for(name) == pytest.approx(scaling)
    assert cfg.scaling_for("model.layers.0.self_attn.q_proj") == pytest.approx(12.0 / root(4))


def test_every_registered_method_builds_its_predictor_and_names_itself():
    assert tuple(REGISTRY) == METHODS and {"next", "linear", "relex", "relex-anchored"} <= set(METHODS)
    for name in METHODS:
        assert make_predictor(name).name == name
    with pytest.raises(ValueError, match="unknown method"):
        make_predictor("nope")


def test_cli_method_choices_and_help_come_from_the_registry():
    from nextrap.cli.main import main

    out = CliRunner().invoke(main, ["extrapolate", "--help"], terminal_width=400).output
    for name, spec in REGISTRY.items():
        assert f"{name}: {spec.summary[:30]}" in " ".join(out.split())
    bad = CliRunner().invoke(main, ["extrapolate", "run", "-o", "x", "--method", "nope"])
    assert bad.exit_code == 2 and all(m in bad.output for m in METHODS)


@dataclasses.dataclass(frozen=True)
class _Opts:
    coefs: tuple[float, ...] | None = dataclasses.field(
        default=None, metadata=cli("--coef", "c", dest="coefs", multiple=True, type=float, empty_is_none=True)
    )
    mode: str = dataclasses.field(default="a", metadata=cli("--mode", "m", choices=["a", "b"]))
    hashed: bool = dataclasses.field(default=True, metadata=cli("--no-hash", "h", dest="no_hash", is_flag=True, invert=True))
    hidden: int = 3  # no metadata: not an option


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], _Opts()),
        (["--coef", "1", "--coef", "2.5", "--mode", "b", "--no-hash"], _Opts(coefs=(1.0, 2.5), mode="b", hashed=False)),
    ],
)
def test_options_from_metadata_round_trip(args, expected):
    got = {}

    @click.command()
    @options_from(_Opts)
    def command(**params):
        got["opts"] = _Opts(**values_for(_Opts, params))

    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    assert got["opts"] == expected
    assert "--hidden" not in CliRunner().invoke(command, ["--help"]).output
