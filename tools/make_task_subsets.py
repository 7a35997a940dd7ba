"""Build the small real-data subsets shipped in transformers_momentum/data/tasks/ (run once, by a developer).

Reads the full datasets from a shared-data checkout with `tools/shared_data.py`'s parsers and writes, per task, a
seeded sample of the demonstration pool (`train.jsonl`) and of the evaluation split (`eval.jsonl`) in the column
layout of the Hugging Face dataset the paper's code loads. The package never reads the shared data at run time; full
sets are loaded by path (`--data-dir`, after `tools/shared_data.py`) or Hub name.

    python tools/make_task_subsets.py /path/to/shared/data transformers_momentum/data/tasks
"""

import random
import sys
from pathlib import Path

from shared_data import LOADERS, load_agnews, write_jsonl

POOL, EVAL = 400, 300


def load_all(data: Path) -> dict:
    tasks = {task: loader(data) for task, loader in LOADERS.items()}
    # GLUE SST-2 train is mostly phrases; the paper draws demos from it as is, but whole sentences make better demos
    # for small models, so the shipped pool keeps sentences of 8+ words.
    train, evaluation = tasks["sst2"]
    tasks["sst2"] = ([r for r in train if len(r["sentence"].split()) >= 8], evaluation)
    # The shipped AG News subset was built with the CSV's backslash line-break escapes left in the text.
    tasks["agnews"] = load_agnews(data, unescape_line_breaks=False)
    return tasks


def main(data_dir: str, out_dir: str) -> None:
    for task, (train, evaluation) in load_all(Path(data_dir)).items():
        rng = random.Random(0)
        rng.shuffle(train)
        rng.shuffle(evaluation)
        for name, rows in (("train", train[:POOL]), ("eval", evaluation[:EVAL])):
            write_jsonl(rows, Path(out_dir) / task / f"{name}.jsonl")
        print(task, min(POOL, len(train)), min(EVAL, len(evaluation)), "of", len(train), len(evaluation))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
