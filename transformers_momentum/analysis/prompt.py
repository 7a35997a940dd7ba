"""Token layout of ZSL, ICL and FT sequences, as the code released with Dai et al. 2023 builds them (§3-4),
adapted to Hugging Face tokenizers.

The paper's fairseq code builds, per task:

* demonstration i: ``tok(T_in(x'_i)) + tok(" " + y'_i) + [SEP]``;
* ICL context: ``[START] + demo_1 + ... + demo_k``; ZSL/FT context: ``[START]``;
* evaluation sequence for candidate c: ``context + tok(T_in(x)) + tok(" " + c)``;
* FT training sequence for demo i: ``[START] + tok(T_in(x'_i)) + tok(" " + y'_i)`` (no trailing separator).

On HF tokenizers: START is the tokenizer's BOS token, or its EOS token when it has no BOS (GPT-2 style models, where
one token plays both roles), or the token named by ``start_token``; when there is none, sequences start without one.
SEP is the EOS token (the fairseq ``</s>`` line separator), or the tokens of ``"\\n"`` with ``separator="newline"``.
fairseq encodes every line of a text separately and ends it with ``</s>``; ``newline="eos"`` does the same for line
breaks inside the text (the convention of the paper's fairseq GPT models). Input and answer are tokenized separately
with ``add_special_tokens=False`` so the label tokens are exactly the candidates' tokens, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AnalysisInputError
from .tasks import TaskSpec


@dataclass(frozen=True)
class Context:
    """Token ids of an ICL (or ZSL) context and where each demonstration's content sits in it.

    ``demo_spans[i] = (start, end)``: positions of demo i's input and label tokens (its separator excluded), which
    are exactly the tokens of FT training sequence i after its START token.
    """

    input_ids: list[int]
    demo_spans: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.input_ids)


class PromptLayout:
    """Builds the token sequences of one task for one tokenizer (see the module docstring)."""

    def __init__(
        self,
        tokenizer,
        task: TaskSpec,
        *,
        separator: str = "eos",
        start_token: str | None = None,
        newline: str = "keep",
        use_start_token: bool = True,
    ):
        self.tokenizer = tokenizer
        self.task = task
        if newline not in ("keep", "eos"):
            raise AnalysisInputError(f"newline must be 'keep' or 'eos', got {newline!r}.")
        if newline == "eos" and tokenizer.eos_token_id is None:
            raise AnalysisInputError("newline='eos' needs a tokenizer with an EOS token.")
        self.newline = newline
        if start_token is not None:
            start = tokenizer.convert_tokens_to_ids(start_token)
            if start is None or (start == tokenizer.unk_token_id and start_token != tokenizer.unk_token):
                raise AnalysisInputError(f"start_token {start_token!r} is not a token of the tokenizer.")
        else:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.start_ids: list[int] = [start] if (use_start_token and start is not None) else []
        if separator == "eos":
            if tokenizer.eos_token_id is None:
                raise AnalysisInputError(
                    "The tokenizer has no EOS token to separate demonstrations; use separator='newline'."
                )
            self.separator_ids = [tokenizer.eos_token_id]
        elif separator == "newline":
            self.separator_ids = self._encode("\n")
        else:
            raise AnalysisInputError(f"separator must be 'eos' or 'newline', got {separator!r}.")
        self.label_ids: list[list[int]] = [self._label_tokens(word) for word in task.label_words]
        self._check_distinct_labels()

    def _check_distinct_labels(self) -> None:
        """Two label words with the same label tokens would get the same score (a tokenizer that lowercases or
        normalises them, or maps both to one token): the prediction between them would be arbitrary."""
        first: dict[tuple[int, ...], int] = {}
        for label, ids in enumerate(self.label_ids):
            other = first.setdefault(tuple(ids), label)
            if other != label:
                words = self.task.label_words
                raise AnalysisInputError(
                    f"Task {self.task.name!r}: the label words {words[other]!r} (label {other}) and {words[label]!r} "
                    f"(label {label}) tokenize identically (tokens {ids}), so they cannot be told apart; choose "
                    "label words the tokenizer keeps distinct."
                )

    def _encode(self, text: str) -> list[int]:
        if self.newline == "eos" and "\n" in text:
            ids: list[int] = []
            for i, line in enumerate(text.split("\n")):
                if i:
                    ids.append(self.tokenizer.eos_token_id)
                ids += self._encode_line(line)
            return ids
        return self._encode_line(text)

    def _encode_line(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _label_tokens(self, word: str) -> list[int]:
        ids = self._encode(self.task.answer_prefix + word)
        unk = self.tokenizer.unk_token_id
        if not ids or (unk is not None and unk in ids):
            raise AnalysisInputError(
                f"Task {self.task.name!r}: the label word {word!r} is missing from the tokenizer's vocabulary "
                f"(it tokenizes to {'nothing' if not ids else 'the unknown token'}). Choose label words the "
                "tokenizer knows."
            )
        return ids

    @property
    def single_token_labels(self) -> bool:
        return all(len(ids) == 1 for ids in self.label_ids)

    def input_ids(self, example: dict) -> list[int]:
        """``tok(T_in(x))``."""
        return self._encode(self.task.format_input(example))

    def demo_ids(self, example: dict) -> list[int]:
        """``tok(T_in(x)) + tok(" " + y)`` (the demonstration's content, without separator)."""
        return self.input_ids(example) + self.label_ids[int(example["label"])]

    def context(self, demos: list[dict]) -> Context:
        ids = list(self.start_ids)
        spans = []
        for demo in demos:
            content = self.demo_ids(demo)
            spans.append((len(ids), len(ids) + len(content)))
            ids += content + self.separator_ids
        return Context(ids, spans)

    def zero_shot_context(self) -> Context:
        return Context(list(self.start_ids), [])

    def ft_sequence(self, example: dict) -> list[int]:
        """``[START] + tok(T_in(x)) + tok(" " + y)``: one FT training example."""
        return list(self.start_ids) + self.demo_ids(example)

    def query_ids(self, example: dict, candidate: int = 0) -> list[int]:
        """The query part of an evaluation sequence: ``tok(T_in(x)) + tok(" " + c)``."""
        return self.input_ids(example) + self.label_ids[candidate]

    def longest_query(self, examples) -> int:
        """Tokens of the longest evaluation sequence among `examples` with the longest answer (START included)."""
        longest_answer = max(map(len, self.label_ids))
        return len(self.start_ids) + longest_answer + max(len(self.input_ids(ex)) for ex in examples)


__all__ = ["Context", "PromptLayout"]
