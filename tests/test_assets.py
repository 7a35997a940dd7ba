"""Offline model cache: the folders it writes have the user's normal permissions (not tempfile's 0700)."""

from __future__ import annotations

import os

from transformers_momentum.assets import staging_folder


def test_staging_folder_has_umask_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    target = tmp_path / "cache" / "smollm2-135m"
    staging = staging_folder(target)
    staging.rename(target)  # what offline_model_path does once the conversion is written
    assert target.is_dir() and not list(target.parent.glob(".smollm2-135m-*"))
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    assert staging_folder(target) != staging_folder(target)  # concurrent conversions never share a folder
