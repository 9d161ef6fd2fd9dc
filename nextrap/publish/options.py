"""Where and how an adapter is published: the Hub options of ``push`` and ``extrapolate --push-to-hub``.

Torch- and click-free, so the CLI builds these options from the fields' metadata at no cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nextrap.util.cli_spec import cli

__all__ = ["HubOptions"]


@dataclass(frozen=True)
class HubOptions:
    """``private``: create the repository as private; ``revision``: the branch (created if missing);
    ``token``: default ``HF_TOKEN``, else the saved login (never printed or stored); ``hub_endpoint``:
    default ``HF_ENDPOINT``, else https://huggingface.co."""

    private: bool = field(
        default=False,
        metadata=cli(
            "--private",
            "Create the repository as private (if it does not exist).",
            is_flag=True,
            group="Publishing",
        ),
    )
    revision: str | None = field(
        default=None,
        metadata=cli(
            "--revision", "Branch to commit to; created if missing [default: main].", group="Publishing"
        ),
    )
    token: str | None = field(
        default=None,
        metadata=cli(
            "--token",
            "Hugging Face token [default: HF_TOKEN, else the saved login]. Never printed or stored.",
            group="Publishing",
        ),
    )
    hub_endpoint: str | None = field(
        default=None,
        metadata=cli(
            "--hub-endpoint",
            "Hub URL [default: HF_ENDPOINT, else https://huggingface.co].",
            group="Publishing",
        ),
    )
