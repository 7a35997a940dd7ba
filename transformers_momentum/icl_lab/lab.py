"""The lab's entry point: `run_icl_lab`, the pipeline of stage modules in `pipeline.py` (tasks -> training ->
evaluation -> learners -> statistics -> typed results -> report). The CLI calls it through this module."""

from __future__ import annotations

from .pipeline import run_icl_lab

__all__ = ["run_icl_lab"]
