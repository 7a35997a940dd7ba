"""Publish a checkpoint folder (``model_cards/<name>/``) to the Hugging Face Hub, atomically and with retries.

Why a revision is never half-published
--------------------------------------
The whole folder goes up as **one commit** (`HfApi.create_commit`). With `hf_xet` installed, `HfApi.upload_folder`
of huggingface_hub 2.x switches to a streamed pipeline that may split a folder into several commits ("part 2", and
smaller chunks after a failed commit), which could leave a revision holding half a checkpoint; so the operations
are built here and sent as a single `create_commit`. Large files (LFS/Xet) are uploaded as blobs
before the commit, but no revision refers to them until the commit request lands, and the Hub applies a commit
atomically: the branch points either at the old commit or at the new one. So an upload interrupted at any point
leaves the revision as it was.

Retries must not stack a second commit on top of one that did land (a lost *response* looks exactly like a lost
*request*). Every attempt therefore pins ``parent_commit`` to the revision head read before the first attempt: a
retry after a commit that landed is refused by the Hub (HTTP 412), and :func:`publish` then compares the remote
tree with the local folder file by file (git blob ids / LFS sha256, the Hub's own ids from
`huggingface_hub.utils.sha`) to tell "landed" from "someone else pushed".

Every other call (whoami, create_repo, reading the head) is retried the same way on connection errors, timeouts
and 5xx/408/429 answers; what still fails becomes one :class:`PublishError` line. The commit also deletes remote
files that are no longer in the folder, so the revision ends up holding exactly the folder (plus the
`.gitattributes` the Hub always keeps).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

#: What a checkpoint folder must contain to be usable from the Hub (card, config, weights, tokenizer, generation).
REQUIRED_FILES = ("README.md", "config.json", "model.safetensors", "tokenizer.json", "generation_config.json")
#: Pickle-based formats are refused: checkpoints ship safetensors and JSON only.
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: HTTP answers worth another attempt: timeouts, rate limits and server errors.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")


class PublishError(RuntimeError):
    """A publish that cannot proceed; the message says what to fix. It never contains the token."""


class CheckpointFolderError(PublishError):
    """The folder or repo id is not publishable (bad input: nothing was sent)."""


@dataclass
class PublishResult:
    repo_id: str
    revision: str
    files: list[tuple[str, int]]  # (path in repo, size in bytes)
    commit_oid: str | None = None
    commit_url: str | None = None
    attempts: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def list_checkpoint_files(folder: str | Path) -> list[tuple[str, int]]:
    """The files ``publish`` would upload (relative POSIX paths, sizes), after validating the folder.

    Checks: the required files exist, nothing is a pickle, every ``*.safetensors`` header is whole and covers its
    file (a truncated download or copy is refused), and every ``*.json`` parses.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointFolderError(f"Checkpoint folder {str(root)!r} does not exist or is not a directory.")
    files = sorted(
        (path.relative_to(root).as_posix(), path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    present = {name for name, _ in files}
    missing = [name for name in REQUIRED_FILES if name not in present]
    if missing:
        raise CheckpointFolderError(
            f"Checkpoint folder {str(root)!r} lacks {', '.join(missing)}. A publishable folder holds the model card "
            "(README.md), config.json, model.safetensors, the tokenizer and generation_config.json; build it with "
            "`examples/pretrain_momentum_gpt.py --stages cards` or `model.save_pretrained` + `tokenizer.save_pretrained`."
        )
    pickled = [name for name in present if name.endswith(FORBIDDEN_SUFFIXES)]
    if pickled:
        raise CheckpointFolderError(
            f"Refusing to publish pickle-based files {sorted(pickled)}: ship safetensors only (remove them from "
            f"{str(root)!r})."
        )
    for name in sorted(present):
        _check_readable(root / name)
    return files


def _check_readable(path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy"):  # reads and checks the header, maps no tensor
                pass
        except SafetensorError as error:
            raise CheckpointFolderError(
                f"{str(path)!r} is not a whole safetensors file ({error}); was it truncated? Save it again."
            ) from None
    elif path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointFolderError(f"{str(path)!r} is not valid JSON ({error}).") from None


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(error: BaseException) -> bool:
    """Connection drops, timeouts and 5xx/408/429 answers: worth another attempt."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        from huggingface_hub.utils import (
            httpx,
        )  # the HTTP client of the installed huggingface_hub (httpx2 in 2.x)
    except ImportError:
        import httpx

    if isinstance(error, OfflineModeIsEnabled):  # a ConnectionError that no retry can fix
        return False
    # The exceptions huggingface_hub's own http_backoff retries, plus the standard library's.
    transport = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
    if isinstance(error, (*transport, ConnectionError, TimeoutError)):
        return True
    return _status(error) in TRANSIENT_STATUS


def _reason(error: BaseException) -> str:
    """The first line of an error, prefixed by its type: what the user sees."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class _Hub:
    """The `HfApi` calls of one publish, each retried on transient errors and mapped to one `PublishError` line."""

    def __init__(self, api, repo_id: str, max_attempts: int, backoff_seconds: float):
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive integer (1 or more), got {max_attempts!r}")
        self.api, self.repo_id = api, repo_id
        self.max_attempts, self.backoff_seconds = max_attempts, backoff_seconds
        self.user: str | None = None
        self.notes: list[str] = []  # the calls that needed another attempt

    def call(self, what: str, function: Callable[..., T], *args, **kwargs) -> T:
        delay = self.backoff_seconds
        for attempt in range(1, self.max_attempts + 1):
            try:
                return function(*args, **kwargs)
            except Exception as error:
                if not _is_transient(error) or attempt == self.max_attempts:
                    raise self.error(what, error, attempt) from None
                logger.info("%s failed (%s); retrying in %.1f s", what, _reason(error), delay)
                self.notes.append(f"{what}: attempt {attempt} failed ({type(error).__name__}), retried")
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def error(self, what: str, error: BaseException, attempts: int = 1) -> PublishError:
        """The one place that turns a Hub or network failure into a message."""
        from huggingface_hub.errors import (
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        endpoint, status = self.api.endpoint, _status(error)
        if isinstance(error, OfflineModeIsEnabled):
            return PublishError(
                f"HF_HUB_OFFLINE is set, so the Hub cannot be reached ({what}); unset it to publish."
            )
        if _is_transient(error) and status is None:
            return PublishError(
                f"Could not reach the Hub at {endpoint} while {what} ({_reason(error)}), after {attempts} "
                "attempt(s). Check the network connection, or HF_ENDPOINT / --endpoint."
            )
        if status == 401:
            return PublishError(
                f"The Hub at {endpoint} rejected the token (HTTP 401) while {what}. Check HF_TOKEN (it needs "
                "write access) or run `hf auth login` again."
            )
        if status == 403:
            namespace = f"your own namespace ({self.user}/...)" if self.user else "your own namespace"
            return PublishError(
                f"The token is valid but may not write to {self.repo_id!r} (HTTP 403) while {what}; publish under "
                f"{namespace} or an organization you can write to."
            )
        if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
            return PublishError(f"{_reason(error)} (while {what} {self.repo_id!r}).")
        detail = f"HTTP {status}" if status is not None else type(error).__name__
        if _is_transient(error):
            detail += f" after {attempts} attempt(s)"
        return PublishError(f"The Hub at {endpoint} failed while {what} ({detail}): {_reason(error)}")


def _remote_matches(hub: _Hub, revision: str, folder: Path, files: list[tuple[str, int]]) -> str | None:
    """The head commit of ``revision`` if it holds exactly our files' contents, else None."""
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    info = hub.call("reading the revision", hub.api.model_info, hub.repo_id, revision=revision)
    tree = hub.call(
        "listing the remote files",
        lambda: list(hub.api.list_repo_tree(hub.repo_id, revision=info.sha, recursive=True)),
    )
    remote = {entry.path: entry for entry in tree if hasattr(entry, "blob_id")}
    for name, size in files:
        entry = remote.get(name)
        if entry is None or entry.size != size:
            return None
        with open(folder / name, "rb") as handle:
            if entry.lfs is not None:  # large files are known by the sha256 of their content, streamed
                if entry.lfs.sha256 != sha_fileobj(handle).hex():
                    return None
            elif entry.blob_id != git_hash(handle.read()):  # regular files: the Hub keeps them small
                return None
    extra = set(remote) - {name for name, _ in files} - {".gitattributes"}
    return None if extra else info.sha


def _operations(hub: _Hub, parent: str, root: Path, files: list[tuple[str, int]]) -> list:
    """One commit's operations: add every local file, delete remote files the folder no longer has."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    local = {name for name, _ in files}
    remote = hub.call("listing the remote files", hub.api.list_repo_files, hub.repo_id, revision=parent)
    stale = [path for path in remote if path not in local and path != ".gitattributes"]
    return [CommitOperationDelete(path_in_repo=path) for path in stale] + [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(root / name)) for name, _ in files
    ]


def publish(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    max_attempts: int = 4,
    backoff_seconds: float = 2.0,
    endpoint: str | None = None,
) -> PublishResult:
    """Upload ``folder`` to ``repo_id`` (created if missing) as one commit on ``revision`` (default ``main``).

    Args:
        folder: a checkpoint folder such as ``model_cards/momentum-gpt-1.4M-1.6M``.
        repo_id: ``"<org or user>/<name>"``.
        private: create the repository private (ignored if it already exists).
        revision: branch to commit to; created from ``main`` if it does not exist.
        dry_run: only validate the folder (files, safetensors headers, JSON) and return the file list; no network.
        token: a Hub token; defaults to ``HF_TOKEN`` / the token saved by ``hf auth login``. Never printed.
        commit_message: defaults to ``"Upload <folder name>"``.
        max_attempts / backoff_seconds: every Hub call is retried on connection errors, timeouts and 5xx/408/429
            answers, ``backoff_seconds`` then twice as long, and so on.
        endpoint: Hub URL; defaults to ``HF_ENDPOINT`` (read by `huggingface_hub` at import) or huggingface.co.

    Raises:
        CheckpointFolderError: the folder or repo id is not publishable (nothing was sent).
        PublishError: the Hub refused, or could not be reached; the message is one line and says what to do.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import validate_repo_id

    root = Path(folder)
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise CheckpointFolderError(f"Invalid repo id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise CheckpointFolderError(f"Give the repo id as '<org or user>/<name>'; got {repo_id!r}.")
    files = list_checkpoint_files(root)
    branch = revision or "main"
    result = PublishResult(repo_id=repo_id, revision=branch, files=files, dry_run=dry_run)
    if dry_run:
        return result

    resolved_token = token or get_token()  # HF_TOKEN, then the token saved by `hf auth login`
    if not resolved_token:
        raise PublishError(
            "No Hub token: set HF_TOKEN, run `hf auth login`, or pass --token. (Use --dry-run to list files offline.)"
        )
    hub = _Hub(HfApi(endpoint=endpoint, token=resolved_token), repo_id, max_attempts, backoff_seconds)
    hub.user = hub.call("checking the token", hub.api.whoami)["name"]
    logger.info(
        "Publishing %d files (%d bytes) to %s@%s as %s",
        len(files),
        result.total_bytes,
        repo_id,
        branch,
        hub.user,
    )
    hub.call("creating the repository", hub.api.create_repo, repo_id, private=private, exist_ok=True)
    if branch != "main":
        hub.call("creating the branch", hub.api.create_branch, repo_id, branch=branch, exist_ok=True)
    parent = hub.call("reading the revision", hub.api.model_info, repo_id, revision=branch).sha

    message = commit_message or f"Upload {root.name}"
    delay = backoff_seconds
    for attempt in range(1, hub.max_attempts + 1):
        result.attempts = attempt
        try:
            info = hub.api.create_commit(
                repo_id=repo_id,
                operations=_operations(hub, parent, root, files),
                commit_message=message,
                revision=branch,
                parent_commit=parent,
            )
            result.commit_oid, result.commit_url = info.oid, info.commit_url
            break
        except PublishError:
            raise
        except Exception as error:  # connection drops, timeouts, 5xx, 412 after a lost response
            if not (_is_transient(error) or _status(error) == 412):
                raise hub.error("committing", error, attempt) from None
            landed = _remote_matches(hub, branch, root, files)
            if landed is not None and landed != parent:
                # The commit went through; only its answer was lost.
                result.commit_oid = landed
                result.notes.append(
                    f"attempt {attempt}: response lost ({type(error).__name__}); commit had landed"
                )
                break
            head = hub.call("reading the revision", hub.api.model_info, repo_id, revision=branch).sha
            if head != parent:
                raise PublishError(
                    f"{repo_id}@{branch} moved to {head[:10]} during the upload (someone else pushed); nothing of "
                    "ours was committed. Re-run publish to upload on top of the new head."
                ) from None
            result.notes.append(
                f"attempt {attempt}: {type(error).__name__}; {branch} unchanged at {parent[:10]}"
            )
            logger.info("Upload attempt %d failed (%s); %s is unchanged", attempt, _reason(error), branch)
            if attempt == hub.max_attempts:
                raise PublishError(
                    f"Upload failed after {attempt} attempts ({_reason(error)}). {repo_id}@{branch} is unchanged at "
                    f"{parent[:10]}: nothing was half-published. Re-run when the connection is back."
                ) from None
            time.sleep(delay)
            delay *= 2

    if _remote_matches(hub, branch, root, files) is None:
        raise PublishError(
            f"After the commit, {repo_id}@{branch} does not match {str(root)!r} (verify by hand)."
        )
    result.notes = hub.notes + result.notes
    return result
