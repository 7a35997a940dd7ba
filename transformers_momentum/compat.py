"""Differences between the transformers releases the plugin supports, and the version policy.

*Cache argument.* transformers 5.24 renamed the cache argument of every forward, and the cache field of every model
output, from `past_key_values` to `cache` (the old name is deprecated, removal planned for 5.40); 5.23 knows only the
old name. The plugin's own calls use the installed release's name, so they neither break on 5.23 nor warn on 5.24+.
(`modeling_momentum_gpt.py` keeps its own copy of `CACHE_NAME`: it must stay self-contained for remote code.)

*Hub kernels.* transformers 5.25 turns hub kernels on by default in `from_pretrained` and then requires the
`kernels` package. Where it is not installed (it cannot be on every platform or package mirror), every
`from_pretrained` fails unless `USE_HUB_KERNELS=0`; kernels are fetched from the Hub at run time, so offline they
could not load anyway. Importing the plugin then switches them off for the process, unless the user chose a value.

*Version policy.* pyproject sets a floor and no cap: a cap makes pip silently downgrade the transformers a user
already has. CI tests the floor and `NEWEST_TESTED`; on a newer release the plugin still runs and says so in one
line at import, so a failure can be traced to an untested release instead of to the user's code.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import transformers
from packaging.version import Version
from transformers.modeling_outputs import BaseModelOutputWithPast

#: The newest transformers release CI tests (`make test`); the floor is pyproject's `transformers>=` (`make test-min`).
NEWEST_TESTED = "5.25.0"

CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

logger = logging.getLogger("transformers_momentum")


def cache_kwargs(cache) -> dict:
    """`{CACHE_NAME: cache}`, to splat into a model call."""
    return {CACHE_NAME: cache}


def output_cache(output):
    """The cache a model output carries, under the installed release's field name."""
    return getattr(output, CACHE_NAME)


def switch_off_unavailable_hub_kernels(version: str = transformers.__version__) -> bool:
    """Set `USE_HUB_KERNELS=0` when transformers `version` (the installed one) turns hub kernels on by default but
    `kernels` is missing and the user has not chosen a value. Returns whether it did."""
    wants_kernels = Version(version) >= Version("5.25.0")
    if (
        not wants_kernels
        or "USE_HUB_KERNELS" in os.environ
        or importlib.util.find_spec("kernels") is not None
    ):
        return False
    os.environ["USE_HUB_KERNELS"] = "0"
    logger.info("The `kernels` package is not installed: hub kernels are off (USE_HUB_KERNELS=0).")
    return True


def untested_release_notice(version: str = transformers.__version__) -> str | None:
    """One line for a transformers `version` (the installed one) newer than the newest release CI tested (same minor
    and older: None)."""
    installed, newest = Version(version), Version(NEWEST_TESTED)
    if (installed.major, installed.minor) <= (newest.major, newest.minor):
        return None
    return (
        f"transformers-momentum was tested up to transformers {newest.major}.{newest.minor}; you have "
        f"{version}. If something fails, try `pip install 'transformers<{newest.major}."
        f"{newest.minor + 1}'` and report it."
    )


__all__ = [
    "CACHE_NAME",
    "NEWEST_TESTED",
    "cache_kwargs",
    "output_cache",
    "switch_off_unavailable_hub_kernels",
    "untested_release_notice",
]
