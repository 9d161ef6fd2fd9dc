"""Publishing to the Hub, against a local stand-in server (tests/hub_server.py): no network."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard

import nextrap
from nextrap.cli.main import main
from nextrap.errors import HubError
from nextrap.publish.hub import push
from nextrap.testing.synthetic import PlantSpec, llama_like_shapes, write_synthetic_run

from .hub_server import LocalHub

TOKEN = "hf_test_token_123"
SHAPES = llama_like_shapes(layers=1, hidden=16, intermediate=32, kv_dim=8)
FAST = nextrap.NExtConfig(epochs=5)


@pytest.fixture(autouse=True)
def hub_online(monkeypatch):
    """conftest puts the whole suite offline; these tests talk to the local stand-in server."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def _adapter_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub-adapter")
    run = write_synthetic_run(root / "run", range(10, 81, 10), SHAPES, PlantSpec(rank=2, alpha=4))
    for ckpt in run.iterdir():
        cfg = json.loads((ckpt / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B"
        (ckpt / "adapter_config.json").write_text(json.dumps(cfg))
    nextrap.extrapolate(run, root / "out", nextrap.ExtrapolateOptions(method="next", coefs=(2.0,), predictor=FAST))
    return root


@pytest.fixture
def adapter(tmp_path: Path, _adapter_template: Path) -> Path:
    """An extrapolated adapter (coef 2) of a small planted run whose config names a Hub base model.

    Each test gets its own copy of the run and the output (``tmp_path/run``, ``tmp_path/out``), made once
    per module: extrapolating anew for every test cost more than the test itself.
    """
    for name in ("run", "out"):
        shutil.copytree(_adapter_template / name, tmp_path / name)
    return tmp_path / "out"


@pytest.fixture
def no_saved_token(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)


def test_push_uploads_adapter_report_and_card_in_one_commit(adapter: Path):
    with LocalHub(TOKEN, "alice") as hub:
        result = push(
            adapter, "alice/jump", private=True, revision="exp-1", token=TOKEN, api=HfApi(endpoint=hub.url)
        )
        repo = hub.state.repos["alice/jump"]
    assert repo["private"] and repo["branches"] == {"main", "exp-1"}
    assert len(repo["commits"]) == 1
    commit = repo["commits"][0]
    assert commit["revision"] == "exp-1"
    files = commit["files"]
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json", "nextrap.json", "README.md"}
    assert files["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").read_bytes()
    assert result.commit_url.endswith("/commit/" + "a" * 40) and result.created_branch

    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.base_model == "Qwen/Qwen2.5-0.5B"
    assert {"nextrap", "lora"} <= set(card.data.tags)
    report = json.loads(files["nextrap.json"])
    virtual = report["outputs"][0]["virtual_step"]
    assert f"virtual step {virtual:g}" in card.text and "coefficient 2" in card.text
    assert (
        "method: `next`" in card.text
        and "is_trainable=True" in card.text
        and "lora_adapter_path" in card.text
    )


def test_push_to_existing_repo_and_branch(adapter: Path):
    with LocalHub(TOKEN, "alice") as hub:
        api = HfApi(endpoint=hub.url)
        push(adapter, "alice/jump", revision="b", token=TOKEN, api=api)
        push(adapter, "alice/jump", revision="b", token=TOKEN, api=api)  # repo and branch exist: fine
        assert len(hub.state.repos["alice/jump"]["commits"]) == 2


def test_dry_run_contacts_nothing_and_needs_no_token(adapter: Path, no_saved_token):
    with LocalHub(TOKEN, "alice") as hub:
        result = push(adapter, "alice/jump", dry_run=True, api=HfApi(endpoint=hub.url))
        assert hub.state.requests == []
    names = [row.split()[0] for row in result.plan.describe()]
    assert names == ["adapter_model.safetensors", "adapter_config.json", "nextrap.json", "README.md"]


def test_several_coefficients_go_to_subfolders(tmp_path: Path):
    run = write_synthetic_run(tmp_path / "run", range(10, 81, 10), SHAPES, PlantSpec(rank=2, alpha=4))
    out = nextrap.extrapolate(
        run, tmp_path / "out", nextrap.ExtrapolateOptions(coefs=(1.0, 2.0), predictor=FAST)
    )
    with LocalHub(TOKEN, "alice") as hub:
        push(out.output, "alice/jumps", token=TOKEN, api=HfApi(endpoint=hub.url))
        files = hub.state.repos["alice/jumps"]["commits"][0]["files"]
    assert {"coef-1.0/adapter_model.safetensors", "coef-2.0/adapter_config.json", "nextrap.json"} <= set(
        files
    )
    assert 'subfolder="coef-2.0"' in files["README.md"].decode()


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("wrong_token", "rejected the token"),
        ("other_owner", "permission denied"),
        ("conflict", "revision conflict"),
        ("server_down", "cannot reach the Hub"),
        ("offline", "offline mode"),
    ],
)
def test_push_failures_are_one_clear_line_without_the_token(
    adapter: Path, monkeypatch, setup: str, expected: str
):
    token, repo = TOKEN, "alice/jump"
    with LocalHub(TOKEN, "alice") as hub:
        endpoint = hub.url
        if setup == "wrong_token":
            token = "hf_wrong_secret_456"
        elif setup == "other_owner":
            repo = "bob/jump"
        elif setup == "conflict":
            hub.state.fail_commit_with = 412
        elif setup == "offline":
            monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        if setup == "server_down":
            with socket.socket() as s:  # a port nobody listens on
                s.bind(("127.0.0.1", 0))
                endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(HubError) as info:
            push(adapter, repo, token=token, api=HfApi(endpoint=endpoint))
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert token not in message and TOKEN not in message


def test_no_token_anywhere(adapter: Path, no_saved_token):
    with pytest.raises(HubError, match=r"no Hugging Face token.*HF_TOKEN"):
        push(adapter, "alice/jump")


def test_cli_push_and_extrapolate_push_to_hub(adapter: Path, tmp_path: Path, monkeypatch):
    runner = CliRunner()
    with LocalHub(TOKEN, "alice") as hub:
        res = runner.invoke(
            main, ["push", str(adapter), "alice/a", "--token", TOKEN, "--hub-endpoint", hub.url]
        )
        assert res.exit_code == 0, res.output
        assert "uploaded to alice/a" in res.output and TOKEN not in res.output
        monkeypatch.setenv("HF_TOKEN", TOKEN)  # the token from the environment
        run = adapter.parent / "run"
        args = [
            "extrapolate",
            str(run),
            "-o",
            str(tmp_path / "j"),
            "--epochs",
            "5",
            "--push-to-hub",
            "alice/b",
        ]
        res = runner.invoke(main, [*args, "--revision", "v2", "--hub-endpoint", hub.url])
        assert res.exit_code == 0, res.output
        assert hub.state.repos["alice/b"]["commits"][0]["revision"] == "v2"
        res = runner.invoke(main, ["push", str(adapter), "alice/c", "--dry-run"])
        assert res.exit_code == 0 and "would upload to alice/c" in res.output
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    res = runner.invoke(
        main, ["extrapolate", str(run), "-o", str(tmp_path / "k"), "--push-to-hub", "alice/d"]
    )
    assert res.exit_code == 1 and "no Hugging Face token" in res.output
    assert not (tmp_path / "k").exists()  # failed before any work


@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("NEXTRAP_LIVE_HUB_REPO")),
    reason="live Hub test: set HF_TOKEN and NEXTRAP_LIVE_HUB_REPO (a repository you own) and have network",
)
def test_live_push(adapter: Path):  # pragma: no cover - needs the real Hub
    result = push(adapter, os.environ["NEXTRAP_LIVE_HUB_REPO"], private=True, revision="nextrap-live-test")
    assert result.commit_url


def _fixed_report():
    """A report with every field the card reads, fixed: the card's text depends on nothing else."""
    from nextrap.formats.report import OutputEntry, Report
    entries = [
        OutputEntry(coef=1.0, path="coef-1.0", virtual_step=150.0, rank=8, max_relative_truncation_error=1.5e-3),
        OutputEntry(coef=2.0, path="coef-2.0", virtual_step=200.0, rank=8, max_relative_truncation_error=3.25e-3),
    ]
    return Report(
        nextrap_version="0.1.0",
        created="2026-12-04T00:00:00+0000",
        inputs={"root": "runs/grpo", "layout": "trl", "checkpoints": [{"step": s} for s in range(10, 101, 10)]},
        options={},
        device="cpu",
        method="next",
        horizon={"intervals": 5, "steps": 50},
        last_step=100,
        spacing={"median": 10.0, "spread": 0.0},
        predictor={},
        outputs=entries,
        notes=["coefficient 2 jumps 100 steps, 1.1x the observed span"],
        backtest={
            "recommendation": {"text": "next beats staying at held-out step 100"},
            "scores": [{"method": "next", "step": 100, "coef": 1.0, "relative_error": 0.4125, "cosine": 0.9031}],
        },
    )


GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize(
    ("golden", "args"),
    [
        ("model_card_report.md", ("alice/jump", {"base_model_name_or_path": "Qwen/Qwen2.5-0.5B", "r": 8, "lora_alpha": 16},
                                  "report", ["coef-1.0", "coef-2.0"])),
        ("model_card_bare.md", ("solo", {"base_model_name_or_path": "./local/base", "r": 4, "lora_alpha": 8}, None, None)),
    ],
)  # fmt: skip
def test_card_says_what_it_said_before(golden: str, args):
    """The card's YAML now comes from huggingface_hub's ModelCardData: the same metadata, the same text."""
    from nextrap.publish.card import model_card

    repo_id, config, report, subfolders = args
    card = model_card(repo_id, config, _fixed_report() if report else None, subfolders)
    before = (GOLDEN / golden).read_text()
    new, old = ModelCard(card), ModelCard(before)
    assert new.data.to_dict() == old.data.to_dict()
    assert new.text == old.text
