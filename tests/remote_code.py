"""Running a script as a user without the plugin would: a fresh Python in which `transformers_momentum` cannot be
imported, so checkpoints must load through their own remote code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: Prepended to a script: makes every `transformers_momentum` import fail, as if the plugin were not installed.
HIDE_PLUGIN = textwrap.dedent(
    """
    import importlib.abc, sys
    class HidePlugin(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers_momentum":
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None
    sys.meta_path.insert(0, HidePlugin())
    """
)


def run_without_plugin(
    script: str, modules_cache: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``script`` (dedented) behind :data:`HIDE_PLUGIN`, offline unless ``env`` says otherwise, with its remote
    code cached in ``modules_cache`` and no stdin (a trust prompt fails instead of waiting)."""
    environment = {"HF_HUB_OFFLINE": "1", **os.environ, **(env or {}), "HF_MODULES_CACHE": str(modules_cache)}
    return subprocess.run(
        [sys.executable, "-c", HIDE_PLUGIN + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env=environment,
        stdin=subprocess.DEVNULL,
        timeout=300,
        **kwargs,
    )
