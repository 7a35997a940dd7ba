"""Where trained runs live, so that a lab is resumable and several processes can share one output folder.

Layout: ``OUT/runs/<kind>/eta=<η>/lr=<lr>/seed=<s>/`` holds ``model/`` (`save_pretrained`), ``train_log.json`` and
``eval.json`` (a `RunRecord`). A finished run (its ``eval.json`` at the current `EVAL_VERSION`) is reused as it
is; a trained model without a current evaluation is re-evaluated, not retrained. ``OUT/runs/<kind>/
training_settings.json`` records what the runs were trained with, and a process with other settings is refused.

Processes started by ``torchrun`` / ``accelerate launch`` split the jobs of each phase by rank (`Shard`) and wait
for each other through these files (no process group: the runs are independent, and each process trains with a
plain single-process `Trainer`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import LabInputError
from .results import EVAL_VERSION, RunRecord, from_jsonable, write_json


@dataclass(frozen=True)
class Job:
    """One training run: arm `eta` at learning rate `lr` with `seed`, of `kind` (a task name or "lsa")."""

    kind: str
    eta: str
    lr: float
    seed: int


def lr_label(lr: float) -> str:
    return f"{lr:g}"


class RunStore:
    def __init__(self, out: str | Path):
        self.out = Path(out)

    def folder(self, job: Job) -> Path:
        return self.out / "runs" / job.kind / f"eta={job.eta}" / f"lr={lr_label(job.lr)}" / f"seed={job.seed}"

    def check_settings(self, kind: str, settings: dict) -> None:
        """Record `settings` for `kind`'s runs, or refuse if the folder's runs were trained with others."""
        folder = self.out / "runs" / kind
        path = folder / "training_settings.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = [
                f"{name}: {saved.get(name)} -> {value}"
                for name, value in settings.items()
                if saved.get(name) != value
            ]
            if changed:
                raise LabInputError(
                    f"{folder} holds runs trained with other settings ({', '.join(changed)}); "
                    "use another --out or delete that folder"
                )
            return
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)

    def record(self, job: Job) -> RunRecord | None:
        path = self.folder(job) / "eval.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("eval_version") != EVAL_VERSION:
            return None
        return from_jsonable(RunRecord, data)

    def save_record(self, job: Job, record: RunRecord) -> None:
        write_json(self.folder(job) / "eval.json", record)

    def train_log(self, job: Job) -> dict:
        path = self.folder(job) / "train_log.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def train_or_load(self, job: Job, model_class, build: Callable, fit: Callable):
        """The job's trained model: loaded if saved, else built, trained (`fit(model) -> log dict`) and saved."""
        folder = self.folder(job)
        model_dir = folder / "model"
        if (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file():
            return model_class.from_pretrained(model_dir).eval()
        model = build()
        started, cpu_started = time.time(), time.process_time()
        log = fit(model)
        model.save_pretrained(model_dir)
        write_json(
            folder / "train_log.json",
            {
                **log,
                "train_seconds": time.time() - started,
                "train_cpu_seconds": time.process_time() - cpu_started,
            },
        )
        shutil.rmtree(folder / "trainer", ignore_errors=True)
        return model.eval()

    def wait_for(
        self, jobs: Sequence[Job], poll_seconds: float = 5.0, progress: Callable | None = None
    ) -> None:
        """Block until every job has a current evaluation (written by another process of the launch)."""
        while True:
            missing = [job for job in jobs if self.record(job) is None]
            if not missing:
                return
            if progress:
                progress(
                    f"waiting for {len(missing)} run(s) of other processes, e.g. {self.folder(missing[0])}"
                )
            time.sleep(poll_seconds)

    def training_time(self) -> dict:
        """Seconds each kept run logged for its training (wall and CPU), summed over all of `out/runs`."""
        logs = [json.loads(p.read_text()) for p in sorted(self.out.glob("runs/**/train_log.json"))]
        wall = [log.get("train_seconds", 0.0) for log in logs]
        cpu = [log.get("train_cpu_seconds") for log in logs]
        return {
            "runs": len(logs),
            "train_seconds_total": sum(wall),
            "train_seconds_max": max(wall, default=0.0),
            "train_cpu_seconds_total": sum(c for c in cpu if c is not None),
        }


__all__ = ["Job", "RunStore", "lr_label"]
