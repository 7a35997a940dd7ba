"""Classification tasks for the ICL-vs-finetuning analyzer: templates, label words and data loading.

The six built-in tasks use the templates and label words of the code released with Dai et al. 2023 (the paper's
Table 8 wording differs slightly; see its §4.1): one input line `T_in(x)` per example and the answer
`" " + label word`. Data comes from, in order of preference:

* ``data_dir``: a folder with ``<task>/train.<ext>`` (the demonstration pool) and ``<task>/eval.<ext>`` (the
  evaluation split), ``ext`` one of ``jsonl``, ``json``, ``csv``, ``tsv``, read with `datasets`;
* ``hub=True``: the paper's Hugging Face dataset through ``datasets.load_dataset`` (needs network access);
* otherwise the small real subsets bundled with the package (``transformers_momentum/data/tasks/<task>/``).

Files may use the template's field names or the Hub dataset's column names (``sentence`` for SST-2). A user-defined
task is a few lines::

    task = TaskSpec(name="spam", template="Message: {text} Spam:", label_words=("no", "yes"))
    data = TaskData(train=Dataset.from_list([...]), eval=Dataset.from_list([...]))  # fields "text", "label"
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter

from datasets import Dataset

from .errors import AnalysisInputError

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "tasks"
_EXTENSIONS = ("jsonl", "json", "csv", "tsv")


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
    answer_prefix: str = " "

    def __post_init__(self):
        # A task is checked when it is defined, so a bad one fails before any data is read or any forward runs.
        words = self.label_words
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise AnalysisInputError(
                f"Task {self.name!r}: label_words must be a sequence of strings, one per class; got {words!r}."
            )
        object.__setattr__(self, "label_words", tuple(words))  # frozen: lists become tuples once, here
        if len(words) < 2:
            raise AnalysisInputError(
                f"Task {self.name!r}: a classification task needs at least two label words; got {list(words)}. "
                "ICL and FT predictions are a choice among the label words."
            )
        empty = [i for i, w in enumerate(words) if not w.strip()]
        if empty:
            raise AnalysisInputError(
                f"Task {self.name!r}: label word(s) {empty} (0-based) are empty; got {list(words)}."
            )
        repeated = sorted({w for w in words if words.count(w) > 1})
        if repeated:
            raise AnalysisInputError(
                f"Task {self.name!r}: label word(s) {repeated} name more than one class; got {list(words)}."
            )

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


# ------------------------------------------------------------------------------------------------ the six tasks

TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        "sst2", "Sentence: {text} Label:", ("Negative", "Positive"),
        hub_path="glue", hub_config="sst2", hub_fields={"text": "sentence"},
    ),
    "sst5": TaskSpec("sst5", "Sentence: {text} Label:", ("terrible", "bad", "neutral", "good", "great"), hub_path="SetFit/sst5"),
    "mr": TaskSpec("mr", "Review: {text} Sentiment:", ("Negative", "Positive"), hub_path="rotten_tomatoes"),
    "subj": TaskSpec("subj", "Input: {text} Type:", ("objective", "subjective"), hub_path="SetFit/subj", hub_eval_split="test"),
    "agnews": TaskSpec(
        "agnews",
        "Classify the news articles into the categories of World, Sports, Business, and Technology. "
        "Article: {text} Answer:",
        ("World", "Sports", "Business", "Technology"),
        hub_path="ag_news", hub_eval_split="test",
    ),
    "cb": TaskSpec(
        "cb", "{premise} Question: {hypothesis}. True, False, or Neither? Answer:", ("True", "False", "Neither"),
        hub_path="super_glue", hub_config="cb",
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


def check_split(task: TaskSpec, rows: Dataset, what: str, source: str) -> Dataset:
    """`rows` with the Hub column names mapped onto the template's, after checking fields and labels."""
    for target, column in task.hub_fields.items():
        if column in rows.column_names and target not in rows.column_names:
            rows = rows.rename_column(column, target)
    if len(rows) == 0:
        raise AnalysisInputError(f"Task {task.name!r}: the {what} split from {source} is empty.")
    missing = [name for name in (*task.fields, "label") if name not in rows.column_names]
    if missing:
        raise AnalysisInputError(
            f"Task {task.name!r}: the {what} split from {source} lacks the field(s) {missing}; it has "
            f"{rows.column_names}."
        )
    _check_texts(task, rows, what, source)
    labels = set(rows["label"])
    bad = sorted(
        (label for label in labels if not isinstance(label, int) or not 0 <= label < task.num_classes),
        key=str,
    )
    if bad:
        raise AnalysisInputError(
            f"Task {task.name!r}: label(s) {bad} in the {what} split from {source} are not in 0..{task.num_classes - 1} "
            f"(one per label word {list(task.label_words)})."
        )
    return rows


def _missing_text(value) -> bool:
    """None, NaN (pandas' missing cell in CSV/TSV files) or a string with nothing but whitespace."""
    if value is None or (isinstance(value, float) and value != value):
        return True
    return isinstance(value, str) and not value.strip()


def _check_texts(task: TaskSpec, rows: Dataset, what: str, source: str) -> None:
    """Every template field of every row has text: a None would be formatted as the string "None", an empty or
    whitespace-only text as a prompt without an input."""
    for name in task.fields:
        bad = [i for i, value in enumerate(rows[name]) if _missing_text(value)]
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            raise AnalysisInputError(
                f"Task {task.name!r}: {len(bad)} row(s) of the {what} split from {source} have no text in the field "
                f"{name!r} (missing, None or empty; rows {shown}). Drop or fill them."
            )


def check_task_data(task: TaskSpec, data: TaskData) -> TaskData:
    """`data` with both splits checked (fields present, labels in range), so a bad row fails before any forward."""
    return TaskData(
        train=check_split(task, data.train, "train", data.source),
        eval=check_split(task, data.eval, "eval", data.source),
        source=data.source,
    )


@contextlib.contextmanager
def _quiet_datasets():
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _read_split(folder: Path, split: str, task: TaskSpec) -> Dataset:
    candidates = [folder / f"{split}.{ext}" for ext in _EXTENSIONS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise AnalysisInputError(
            f"Task {task.name!r}: no {split} file in {folder} (expected {split}.jsonl, .json, .csv or .tsv)."
        )
    if path.stat().st_size == 0 or not path.read_bytes().strip():
        raise AnalysisInputError(f"Task {task.name!r}: data file {path} is empty.")
    # A private cache folder: the shared datasets cache is keyed in ways that collide across processes.
    try:
        with tempfile.TemporaryDirectory() as cache_dir, _quiet_datasets():
            if path.suffix in (".jsonl", ".json"):
                return Dataset.from_json(str(path), cache_dir=cache_dir, keep_in_memory=True)
            return Dataset.from_csv(
                str(path),
                sep="\t" if path.suffix == ".tsv" else ",",
                cache_dir=cache_dir,
                keep_in_memory=True,
            )
    except Exception as error:  # datasets wraps parser errors in several types; name the file, keep one line
        reason = (
            str(error.__cause__ or error).splitlines()[0]
            if str(error.__cause__ or error)
            else type(error).__name__
        )
        raise AnalysisInputError(f"Task {task.name!r}: could not parse {path}: {reason}") from None


def load_task_data(
    task: str | TaskSpec, data_dir: str | Path | None = None, *, hub: bool = False
) -> TaskData:
    """The demonstration pool and evaluation split of `task` (see the module docstring for the sources)."""
    task = get_task(task)
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise AnalysisInputError(f"--data-dir {str(folder)!r} is not a directory.")
        folder = folder / task.name
        source = str(folder)
        data = TaskData(_read_split(folder, "train", task), _read_split(folder, "eval", task), source)
    elif hub:
        if task.hub_path is None:
            raise AnalysisInputError(f"Task {task.name!r} names no Hugging Face dataset.")
        from datasets import load_dataset

        loaded = load_dataset(task.hub_path, task.hub_config)
        source = f"hub:{task.hub_path}" + (f"/{task.hub_config}" if task.hub_config else "")
        data = TaskData(loaded[task.hub_train_split], loaded[task.hub_eval_split], source)
    else:
        folder = BUNDLED_DIR / task.name
        if not folder.is_dir():
            raise AnalysisInputError(
                f"Task {task.name!r} has no bundled subset; pass --data-dir (a folder with {task.name}/train.jsonl "
                "and eval.jsonl) or --hub."
            )
        data = TaskData(
            _read_split(folder, "train", task),
            _read_split(folder, "eval", task),
            f"bundled subset {task.name}",
        )
    return check_task_data(task, data)


__all__ = [
    "BUNDLED_DIR",
    "TASKS",
    "AnalysisInputError",
    "TaskData",
    "TaskSpec",
    "check_task_data",
    "get_task",
    "load_task_data",
    "register_task",
]
