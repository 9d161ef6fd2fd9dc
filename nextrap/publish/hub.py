"""Publishing extrapolated adapters to the Hugging Face Hub (huggingface_hub imported lazily).

One commit holds the adapter files, ``nextrap.json`` and a generated model card. The repository is
created if missing (``exist_ok``) and so is the branch given as ``revision``. The token comes from
the argument, else ``HF_TOKEN``, else the saved login; it is never printed, logged or written.
Hub failures become one-line :class:`HubError` messages.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextrap.errors import ConfigError, HubError, InputNotFoundError, UnsafeOutputError
from nextrap.formats.peft import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME
from nextrap.formats.report import REPORT_NAME, Report
from nextrap.layouts import CheckpointRef
from nextrap.publish.card import model_card
from nextrap.run.headers import read_header

__all__ = ["PushPlan", "PushResult", "check_online", "check_repo_id", "check_revision", "plan_push", "push"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class PushPlan:
    """What one commit uploads: ``files[path_in_repo] = local path``, plus the card's text."""

    repo_id: str
    revision: str | None
    private: bool
    files: dict[str, Path]
    card: str

    def describe(self) -> list[str]:
        rows = [f"{p}  ({f.stat().st_size:,} bytes, {f})" for p, f in self.files.items()]
        return [*rows, f"README.md  ({len(self.card.encode()):,} bytes, generated model card)"]


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    dry_run: bool
    commit_url: str | None = None
    repo_url: str | None = None
    created_branch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _published_file(root: Path, path: Path) -> Path:
    """``path`` if it is a regular file that, every link resolved, lies inside ``root`` (resolved); else an error.

    Push publishes nothing else: a link out of the folder (to another adapter, to any file on the disk)
    or a special file under an adapter's file name stops the push before anything is contacted.
    """
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        raise UnsafeOutputError(
            f"{path}: links to {real}, outside the folder being published; nextrap publishes only files inside "
            "it: copy the file into the folder, or remove the link"
        )
    mode = os.stat(real).st_mode
    if not stat.S_ISREG(mode):
        raise UnsafeOutputError(f"{path}: not a regular file; nextrap publishes only regular files")
    return path


def _adapter_files(root: Path, folder: Path) -> dict[str, Path]:
    """The two files of the PEFT adapter in ``folder``, checked: inside ``root``, regular, a safetensors adapter."""
    config, weights = folder / CONFIG_NAME, folder / SAFETENSORS_NAME
    if not (config.is_file() and weights.is_file()):
        legacy = (folder / BIN_NAME).is_file()
        raise InputNotFoundError(
            f"{folder}: no PEFT adapter here (need {CONFIG_NAME} and {SAFETENSORS_NAME}"
            + (f"; {BIN_NAME} is a pickle, which nextrap does not publish: re-save it as safetensors" if legacy else "")
            + "); give the folder nextrap extrapolate wrote"
        )
    files = {SAFETENSORS_NAME: _published_file(root, weights), CONFIG_NAME: _published_file(root, config)}
    # The same checks as for a run's checkpoints: a JSON config, a safetensors header of LoRA factor pairs.
    read_header(CheckpointRef(step=0, path=folder, weights=weights, layout="explicit", step_source="published"))
    return files


def _adapter_folders(folder: Path) -> list[str]:
    """Subfolders (relative paths, up to two levels, links not followed) that hold an adapter config, sorted.

    Found on disk, never taken from the report: a report's paths could name anything (``../other``).
    """
    found = []
    for here, dirs, _ in os.walk(folder, followlinks=False):
        rel = Path(here).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if len(rel.parts) >= 2:
            dirs[:] = []
        if rel.parts and (Path(here) / CONFIG_NAME).is_file():
            found.append(rel.as_posix())
            dirs[:] = []
    return sorted(found)


def _report_file(report: Report) -> Path:
    """The report's own file, published beside the adapter: a regular file, not a link."""
    path = Path(report.folder) / REPORT_NAME
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise UnsafeOutputError(f"{path}: not a regular file (a link?); nextrap publishes only regular files")
    return path


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if the Hub accepts it (huggingface_hub's own validator), else :class:`ConfigError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(
            f"repository id {repo_id!r} is not one the Hub accepts ({str(exc).split(':')[0]}); "
            "use 'name' or 'owner/name'"
        ) from None
    return repo_id


# git check-ref-format --branch, which the Hub applies to branch names: no "..", "@{", control characters,
# spaces or any of ~^:?*[\; no part starting with "." or ending with ".lock"; not "@"; no "//"; and, as a
# branch, not starting with "-" (it would read as an option) and not "HEAD".
_BAD_REF = re.compile(r"\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|//|^/|/$|\.$|\.lock(/|$)|(^|/)\.|^-")


def check_revision(revision: str | None) -> str | None:
    """``revision`` if it is a valid branch name (git's rules; ``refs/pr/N`` too), else :class:`ConfigError`."""
    if revision is None:
        return None
    bad = not revision or revision in ("@", "HEAD") or len(revision.encode()) > 255 or _BAD_REF.search(revision)
    if bad:
        raise ConfigError(
            f"revision {revision!r} is not a valid branch name (git's rules: no '..', spaces, ~^:?*[\\, "
            "no part starting with '.' or ending with '.lock', not starting with '-', not HEAD); choose another "
            "--revision"
        )
    return revision


def check_online() -> None:
    """Fail before any work when huggingface_hub's offline mode (``HF_HUB_OFFLINE=1``) would refuse the push."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise HubError("offline mode is on (HF_HUB_OFFLINE=1): nothing can be pushed; unset it and try again")


def plan_push(
    adapter_dir: str | os.PathLike,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    any_adapter: bool = False,
) -> PushPlan:
    """The files and card for ``adapter_dir``: one adapter, or a folder of ``coef-<c>/`` adapters.

    The folder must be one nextrap wrote (its ``nextrap.json`` beside or above it), so that a raw
    checkpoint or a whole run is not published as an extrapolation; ``any_adapter`` lifts that.
    What is published is found on disk and checked, never read from the report's paths: only
    ``adapter_config.json`` + ``adapter_model.safetensors`` of each adapter folder (the folder itself, or
    its subfolders up to two levels), each a regular file that lies inside the folder with every link
    resolved and that reads as a LoRA adapter, plus the report itself and the generated card.
    """
    folder = Path(adapter_dir)
    check_repo_id(repo_id)
    check_revision(revision)
    if not folder.is_dir():
        raise InputNotFoundError(
            f"{folder}: no such folder; give an adapter folder nextrap extrapolate wrote"
        )
    report = Report.find(folder)
    if not any_adapter and report is None:
        raise InputNotFoundError(
            f"{folder}: not written by nextrap extrapolate (no {REPORT_NAME} in it or its parent); give the "
            "output folder of nextrap extrapolate, or pass --any-adapter to publish another adapter folder"
        )
    root = Path(os.path.realpath(folder))
    files: dict[str, Path] = {}
    subfolders: list[str] = []
    if (folder / CONFIG_NAME).is_file():
        files.update(_adapter_files(root, folder))
    else:
        subfolders = _adapter_folders(folder)
        if not subfolders:
            _adapter_files(root, folder)  # raises the "no adapter here" error
        for sub in subfolders:
            files.update({f"{sub}/{k}": v for k, v in _adapter_files(root, folder / sub).items()})
    if report is not None:
        files[REPORT_NAME] = _report_file(report)
    config_path = files[CONFIG_NAME] if not subfolders else files[f"{subfolders[0]}/{CONFIG_NAME}"]
    card = model_card(repo_id, json.loads(config_path.read_text()), report, subfolders or None)
    return PushPlan(repo_id=repo_id, revision=revision, private=private, files=files, card=card)


def resolve_token(token: str | None) -> str:
    """The token to push with: the argument, else ``HF_TOKEN``, else the saved login."""
    if token:
        return token
    from huggingface_hub import get_token

    found = os.environ.get("HF_TOKEN") or get_token()
    if not found:
        raise HubError("no Hugging Face token: pass --token, set HF_TOKEN, or log in with `hf auth login`")
    return found


def push(
    adapter_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
    api: Any = None,
    any_adapter: bool = False,
) -> PushResult:
    """Upload an adapter folder and its model card to ``repo_id`` in one commit.

    Only the folder's own adapter files are sent (regular files inside it, each checked as a LoRA
    adapter), with a model card built from its ``nextrap.json``; the token is never printed or stored.

    Args:
        adapter_dir: a folder :func:`extrapolate` wrote (with ``any_adapter``, any PEFT adapter folder).
        repo_id: ``user/name`` on the Hub; created if missing (``private`` then applies).
        revision: the branch to commit to, created if missing (default ``main``).
        token: default ``HF_TOKEN``, else the saved login.
        dry_run: plan only: nothing is contacted and no token is needed.
        endpoint: the Hub's URL (default ``HF_ENDPOINT``, else huggingface.co).
        api: an ``HfApi``-like client (tests inject one bound to a local server); by default
            ``HfApi(endpoint=endpoint)``.

    Returns:
        A ``PushResult``: the ``plan`` (repository, revision, the files and where they go), ``dry_run``
        and, after a commit, its ``commit_url``.

    Raises:
        HubError: one line (a bad repository id or revision, no token, offline mode, the Hub's refusal).
    """
    plan = plan_push(adapter_dir, repo_id, revision, private, any_adapter)
    if dry_run:
        return PushResult(plan=plan, dry_run=True)
    check_online()
    secret = resolve_token(token)
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi(endpoint=endpoint)
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    failure: HubError | None = None
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=secret)
        created_branch = False
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=secret)
            created_branch = True
        operations = [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in plan.files.items()
        ]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card.encode()))
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message="Upload extrapolated LoRA adapter (nextrap)",
            revision=revision,
            token=secret,
        )
    except Exception as exc:  # every Hub failure becomes one clear line; the token never appears in it
        failure = _hub_error(exc, where, getattr(api, "endpoint", endpoint), secret)
    if failure is not None:
        # Raised outside the except block, with no cause or context: the Hub's own exception (whose text may
        # echo the request's Authorization header) must not reach a traceback, not even with --debug.
        raise failure
    return PushResult(
        plan=plan,
        dry_run=False,
        commit_url=str(info.commit_url),
        repo_url=str(repo_url),
        created_branch=created_branch,
    )


def _hub_error(exc: Exception, where: str, endpoint: str | None, secret: str) -> HubError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, OfflineModeIsEnabled):
        msg = "offline mode is on (HF_HUB_OFFLINE=1): nothing can be pushed; unset it and try again"
    elif isinstance(exc, HfHubHTTPError) and status == 401:
        msg = f"the Hub rejected the token for {where} (401): check it with `hf auth whoami` or pass another --token"
    elif isinstance(exc, HfHubHTTPError) and status == 403:
        msg = (
            f"permission denied for {where} (403): the token's account cannot write there (is the repository "
            "someone else's, or the token read-only?)"
        )
    elif isinstance(exc, HfHubHTTPError) and status in (409, 412):
        msg = (
            f"revision conflict on {where} ({status}): the branch moved or exists in another state; "
            "pull the latest state or push to another --revision"
        )
    elif isinstance(exc, HfHubHTTPError):
        msg = f"the Hub refused the upload to {where} ({status}): {str(exc).splitlines()[0]}"
    elif _is_connection_error(exc):
        msg = f"cannot reach the Hub at {endpoint or 'https://huggingface.co'}: {type(exc).__name__}; check the network or HF_ENDPOINT"
    else:
        msg = (
            f"upload to {where} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
    return HubError(msg.replace(secret, "***"))


def _is_connection_error(exc: BaseException) -> bool:
    names = {"ConnectError", "ConnectTimeout", "ConnectionError", "ReadTimeout", "TimeoutException"}
    while exc is not None:
        if type(exc).__name__ in names or isinstance(exc, ConnectionError | TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
