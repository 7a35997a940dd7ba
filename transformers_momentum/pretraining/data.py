"""Text in, packed token blocks out: reading corpora, training a byte-level BPE tokenizer, packing with `datasets`.

Inputs are plain-text files (one document per file) or JSON-lines files with a ``"text"`` field per line (one
document per line), optionally xz/gzip/bz2-compressed -- the format of the Gutenberg corpus this project pretrains on.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from collections.abc import Iterator, Sequence
from pathlib import Path

from datasets import Dataset
from transformers import PreTrainedTokenizerFast

#: The one special token: separates documents when packing, starts generation, and doubles as padding.
END_OF_TEXT = "<|endoftext|>"

_OPENERS = {".xz": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}


def _open_text(path: Path) -> io.TextIOBase:
    opener = _OPENERS.get(path.suffix)
    if opener is not None:
        return opener(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _is_jsonl(path: Path) -> bool:
    suffixes = path.suffixes[:-1] if path.suffix in _OPENERS else path.suffixes
    return bool(suffixes) and suffixes[-1] in (".jsonl", ".json")


def iter_documents(paths: Sequence[str | Path], max_chars: int | None = None) -> Iterator[str]:
    """Yield documents from ``paths`` in order, stopping once ``max_chars`` characters were yielded.

    The document that crosses the budget is truncated, so the budget is exact; reading stops early, which matters for
    a 100 MB compressed corpus of which a run uses a few MB.
    """
    remaining = max_chars
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Corpus file {str(path)!r} does not exist (pass .txt or .jsonl[.xz|.gz] files)."
            )
        with _open_text(path) as handle:
            if _is_jsonl(path):
                docs: Iterator[str] = (_text_field(line, path) for line in handle if line.strip())
            else:
                docs = iter([handle.read()])
            for doc in docs:
                if not doc:
                    continue
                if remaining is not None:
                    doc = doc[:remaining]
                    remaining -= len(doc)
                yield doc
                if remaining is not None and remaining <= 0:
                    return


def _text_field(line: str, path: Path) -> str:
    record = json.loads(line)
    if "text" not in record:
        raise KeyError(
            f"JSON-lines corpus {str(path)!r} has a record without a 'text' field: {sorted(record)}."
        )
    return record["text"]


def train_bpe_tokenizer(
    documents: Sequence[str], vocab_size: int, min_frequency: int = 2, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer and wrap it as a `PreTrainedTokenizerFast`.

    Byte-level means every string round-trips (no unknown token), which a tiny vocabulary trained on a few MB needs.
    ``<|endoftext|>`` gets id 0 and serves as BOS, EOS and padding, as in GPT-2.
    """
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must exceed 257 (256 byte symbols + {END_OF_TEXT}); got {vocab_size}.")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(
        documents, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[END_OF_TEXT]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def pack_documents(
    documents: Sequence[str],
    tokenizer: PreTrainedTokenizerFast,
    block_size: int,
    max_blocks: int | None = None,
    num_proc: int | None = None,
) -> Dataset:
    """Tokenize, join documents with EOS and cut the stream into ``block_size``-token blocks (`input_ids`, `labels`).

    The tail that does not fill a block is dropped. Labels equal the inputs: the model shifts them itself.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2; got {block_size}.")
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {
            "input_ids": [ids + [eos] if last else ids for ids, last in zip(encoded, batch["ends_document"])]
        }

    def group(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        stream = [token for ids in batch["input_ids"] for token in ids]
        usable = len(stream) - len(stream) % block_size
        blocks = [stream[i : i + block_size] for i in range(0, usable, block_size)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    # Split long documents (whole books) into ~64 KB pieces so `map` batches stay small; piece boundaries fall on
    # paragraph breaks so that no word is cut in two.
    pieces, ends_document = [], []
    for doc in documents:
        doc_pieces = list(_split_paragraphs(doc, 65536))
        pieces.extend(doc_pieces)
        ends_document.extend([False] * (len(doc_pieces) - 1) + [True])
    dataset = Dataset.from_dict({"text": pieces, "ends_document": ends_document})
    dataset = dataset.map(
        tokenize, batched=True, remove_columns=["text", "ends_document"], num_proc=num_proc, desc="Tokenizing"
    )
    # One `group` batch covering everything keeps the stream contiguous (no per-batch tails dropped); the token
    # counts this recipe handles (a few million) fit in memory easily.
    dataset = dataset.map(
        group, batched=True, batch_size=None, desc=f"Packing into {block_size}-token blocks"
    )
    if len(dataset) == 0:
        raise ValueError(
            f"The corpus yields fewer than block_size={block_size} tokens; give more text or a smaller block."
        )
    if max_blocks is not None and len(dataset) > max_blocks:
        dataset = dataset.select(range(max_blocks))
    return dataset


def _split_paragraphs(text: str, max_chars: int) -> Iterator[str]:
    start = 0
    while start < len(text):
        end = min(len(text), start + max_chars)
        if end < len(text):
            cut = text.rfind("\n\n", start, end)
            end = cut + 2 if cut > start else end
        yield text[start:end]
        start = end


def token_stream(documents: Sequence[str], tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Documents joined with EOS, as one list of token ids (what perplexity evaluation slices into windows)."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for doc in documents:
        for piece in _split_paragraphs(doc, 65536):
            stream.extend(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"])
        stream.append(eos)
    return stream
