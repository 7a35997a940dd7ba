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
tree with the local folder file by file (git blob ids / LFS sha256) to tell "landed" from "someone else pushed".

The commit also deletes remote files that are no longer in the folder, so the revision ends up holding exactly
the folder (plus the `.gitattributes` the Hub always keeps).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: What a checkpoint folder must contain to be usable from the Hub (card, config, weights, tokenizer, generation).
REQUIRED_FILES = ("README.md", "config.json", "model.safetensors", "tokenizer.json", "generation_config.json")
#: Pickle-based formats are refused: checkpoints ship safetensors and JSON only.
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class PublishError(RuntimeError):
    """A publish that cannot proceed; the message says what to fix. It never contains the token."""


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
    """The files ``publish`` would upload (relative POSIX paths, sizes), after validating the folder."""
    root = Path(folder)
    if not root.is_dir():
        raise PublishError(f"Checkpoint folder {str(root)!r} does not exist or is not a directory.")
    files = sorted(
        (path.relative_to(root).as_posix(), path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    present = {name for name, _ in files}
    missing = [name for name in REQUIRED_FILES if name not in present]
    if missing:
        raise PublishError(
            f"Checkpoint folder {str(root)!r} lacks {', '.join(missing)}. A publishable folder holds the model card "
            "(README.md), config.json, model.safetensors, the tokenizer and generation_config.json; build it with "
            "`examples/pretrain_momentum_gpt.py --stages cards` or `model.save_pretrained` + `tokenizer.save_pretrained`."
        )
    pickled = [name for name in present if name.endswith(FORBIDDEN_SUFFIXES)]
    if pickled:
        raise PublishError(
            f"Refusing to publish pickle-based files {sorted(pickled)}: ship safetensors only (remove them from "
            f"{str(root)!r})."
        )
    return files


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    digest.update(path.read_bytes())
    return digest.hexdigest()


def _remote_matches(
    api, repo_id: str, revision: str, folder: Path, files: list[tuple[str, int]]
) -> str | None:
    """The head commit of ``revision`` if it holds exactly our files' contents, else None."""
    info = api.model_info(repo_id, revision=revision)
    remote = {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=info.sha, recursive=True)
        if hasattr(entry, "blob_id")
    }
    for name, size in files:
        entry = remote.get(name)
        if entry is None or entry.size != size:
            return None
        local = folder / name
        if entry.lfs is not None:
            if entry.lfs.sha256 != hashlib.sha256(local.read_bytes()).hexdigest():
                return None
        elif entry.blob_id != _git_blob_sha1(local):
            return None
    extra = set(remote) - {name for name, _ in files} - {".gitattributes"}
    return None if extra else info.sha


def _operations(api, repo_id: str, parent: str, root: Path, files: list[tuple[str, int]]) -> list:
    """One commit's operations: add every local file, delete remote files the folder no longer has."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    local = {name for name, _ in files}
    stale = [path for path in api.list_repo_files(repo_id, revision=parent) if path not in local]
    return [CommitOperationDelete(path_in_repo=path) for path in stale if path != ".gitattributes"] + [
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
        dry_run: only validate the folder and return the file list; no network, no token needed.
        token: a Hub token; defaults to ``HF_TOKEN`` / the token saved by ``hf auth login``. Never printed.
        commit_message: defaults to ``"Upload <folder name>"``.
        max_attempts / backoff_seconds: retries on connection errors and 5xx answers, with exponential backoff.
        endpoint: Hub URL; defaults to ``HF_ENDPOINT`` (read by `huggingface_hub` at import) or huggingface.co.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    root = Path(folder)
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise PublishError(f"Invalid repo id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise PublishError(f"Give the repo id as '<org or user>/<name>'; got {repo_id!r}.")
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
    api = HfApi(endpoint=endpoint, token=resolved_token)
    try:
        user = api.whoami(token=resolved_token)["name"]
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PublishError(
                f"The Hub at {api.endpoint} rejected the token (HTTP {status}). Check HF_TOKEN (it needs write "
                "access) or run `hf auth login` again."
            ) from None
        raise
    logger.info(
        "Publishing %d files (%d bytes) to %s@%s as %s", len(files), result.total_bytes, repo_id, branch, user
    )

    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=resolved_token)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True, token=resolved_token)
        parent = api.model_info(repo_id, revision=branch, token=resolved_token).sha
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PublishError(
                f"The token is valid but may not write to {repo_id!r} (HTTP {status}); publish under your own "
                f"namespace ({user}/...) or an organization you can write to."
            ) from None
        raise

    message = commit_message or f"Upload {root.name}"
    delay = backoff_seconds
    for attempt in range(1, max_attempts + 1):
        result.attempts = attempt
        try:
            info = api.create_commit(
                repo_id=repo_id,
                operations=_operations(api, repo_id, parent, root, files),
                commit_message=message,
                revision=branch,
                parent_commit=parent,
                token=resolved_token,
            )
            result.commit_oid, result.commit_url = info.oid, info.commit_url
            break
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise
        except Exception as error:  # connection drops, timeouts, 5xx, 412 after a lost response
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status is not None and status < 500 and status not in (408, 412, 429):
                raise PublishError(f"The Hub refused the commit (HTTP {status}): {error}") from None
            landed = _remote_matches(api, repo_id, branch, root, files)
            if landed is not None and landed != parent:
                # The commit went through; only its answer was lost.
                result.commit_oid = landed
                result.notes.append(
                    f"attempt {attempt}: response lost ({type(error).__name__}); commit had landed"
                )
                break
            head = api.model_info(repo_id, revision=branch).sha
            if head != parent:
                raise PublishError(
                    f"{repo_id}@{branch} moved to {head[:10]} during the upload (someone else pushed); nothing of "
                    "ours was committed. Re-run publish to upload on top of the new head."
                ) from error
            result.notes.append(
                f"attempt {attempt}: {type(error).__name__}; {branch} unchanged at {parent[:10]}"
            )
            logger.warning(
                "Upload attempt %d failed (%s); %s is unchanged", attempt, type(error).__name__, branch
            )
            if attempt == max_attempts:
                raise PublishError(
                    f"Upload failed after {max_attempts} attempts ({type(error).__name__}: {error}). {repo_id}@{branch} "
                    f"is unchanged at {parent[:10]}: nothing was half-published. Re-run when the connection is back."
                ) from error
            time.sleep(delay)
            delay *= 2

    if _remote_matches(api, repo_id, branch, root, files) is None:
        raise PublishError(
            f"After the commit, {repo_id}@{branch} does not match {str(root)!r} (verify by hand)."
        )
    return result
