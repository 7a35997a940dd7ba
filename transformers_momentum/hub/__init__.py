"""Publishing checkpoint folders to the Hugging Face Hub (atomic single commit, retries, dry run)."""

from .publish import (
    REQUIRED_FILES,
    CheckpointFolderError,
    PublishError,
    PublishResult,
    list_checkpoint_files,
    publish,
)

__all__ = [
    "REQUIRED_FILES",
    "CheckpointFolderError",
    "PublishError",
    "PublishResult",
    "list_checkpoint_files",
    "publish",
]
