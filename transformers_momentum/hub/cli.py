"""``transformers-momentum publish``: upload a checkpoint folder to the Hub (or list it with --dry-run)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from urllib.parse import urlparse

from ..cli import one_line, positive_int


def _endpoint(text: str) -> str:
    """argparse type of ``--endpoint``: an http(s) URL (a typo would otherwise surface as a connection error after
    the retries)."""
    url = urlparse(text)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise argparse.ArgumentTypeError(
            f"expected an http(s) URL such as https://huggingface.co, got {text!r}"
        )
    return text


def _revision(text: str) -> str:
    """argparse type of ``--revision``: a name git accepts for a branch (the Hub would refuse it only after the
    repository was created)."""
    bad = re.search(r"[\s~^:?*\[\\]|\.\.|@\{|//", text)
    if not text or bad or text.startswith(("-", "/", ".")) or text.endswith(("/", ".", ".lock")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid branch name (e.g. main, dev, refs/pr/1)")
    return text


def _not_blank(what: str):
    """argparse type refusing an empty or blank value (an empty token or commit message is a slip, not a choice)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"empty {what}; leave the option out instead")
        return text

    parse.__name__ = what
    return parse


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="Upload a checkpoint folder (model_cards/<name>) to the Hugging Face Hub as one commit.",
        description=(
            "Create the repository if needed and upload the folder as a single atomic commit, retrying every Hub call "
            "on connection errors. Honours HF_ENDPOINT and HF_TOKEN (the token is never printed)."
        ),
    )
    parser.add_argument("folder", help="checkpoint folder, e.g. model_cards/momentum-gpt-1.4M-1.6M")
    parser.add_argument("--repo-id", required=True, help="<org or user>/<name>")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument(
        "--revision", type=_revision, default=None, help="branch to commit to (created from main if missing)"
    )
    parser.add_argument("--commit-message", type=_not_blank("commit message"), default=None)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the folder (files, safetensors headers, JSON) and list what would be uploaded; no network",
    )
    parser.add_argument(
        "--token",
        type=_not_blank("token"),
        default=None,
        help="Hub token (prefer the HF_TOKEN environment variable: command lines end up in shell history)",
    )
    parser.add_argument(
        "--endpoint",
        type=_endpoint,
        default=None,
        help="Hub URL (default: the HF_ENDPOINT environment variable, else huggingface.co)",
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,  # 0 or a negative number used to mean 1 silently
        default=4,
        help="attempts per Hub call on connection errors, timeouts and 5xx answers, 1 or more (backoff 2 s, 4 s, ...)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .publish import CheckpointFolderError, PublishError, publish

    try:
        result = publish(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            dry_run=args.dry_run,
            token=args.token,
            commit_message=args.commit_message,
            max_attempts=args.max_attempts,
            # Read HF_ENDPOINT now rather than relying on huggingface_hub's import-time copy of it.
            endpoint=args.endpoint or os.environ.get("HF_ENDPOINT") or None,
        )
    except PublishError as error:  # one line; 2 for a folder or repo id to fix, 1 for the Hub or the network
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, CheckpointFolderError) else 1
    verb = "Would upload" if result.dry_run else "Uploaded"
    print(
        f"{verb} {len(result.files)} files ({result.total_bytes / 1e6:.2f} MB) to {result.repo_id}@{result.revision}:"
    )
    for name, size in result.files:
        print(f"  {size:>12,d}  {name}")
    for note in result.notes:
        print(f"  note: {note}")
    if not result.dry_run:
        print(f"commit {result.commit_oid} after {result.attempts} attempt(s)")
        if result.commit_url:
            print(result.commit_url)
    return 0
