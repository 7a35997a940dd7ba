"""What the analyzer tests share beyond tests/conftest.py: the vocabulary of the bundled SST-2 subset."""

from __future__ import annotations

import json
import re

from transformers_momentum.analysis.tasks import BUNDLED_DIR

# The templates' words, SST-2's label words, and AG News's (the default different-task control finetunes on them).
TEMPLATE_WORDS = (
    "Sentence",
    "Label",
    ":",
    "Negative",
    "Positive",
    "World",
    "Sports",
    "Business",
    "Technology",
)


def sst2_words(extra=()) -> set[str]:
    """Every word of the bundled SST-2 subset plus the template words, for conftest's ``word_tokenizer`` factory."""
    words = {*TEMPLATE_WORDS, *extra}
    for split in ("train", "eval"):
        for line in (BUNDLED_DIR / "sst2" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            words.update(re.findall(r"\w+|[^\w\s]", json.loads(line)["sentence"]))
    return words
