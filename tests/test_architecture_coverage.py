"""Architecture coverage, measured: K/V tuning and the analyzer's probe on a tiny model of every causal-LM type the
installed transformers knows (see tests/architecture_zoo.py for how each type is built, classified and checked).

docs/architectures.md is this file's own output: `TM_WRITE_ARCHITECTURES_DOC=1 pytest
tests/test_architecture_coverage.py` rewrites it; otherwise the test checks it is current (on the transformers
release it was generated with).
"""

import os
import re
from pathlib import Path

import pytest
import transformers
from architecture_zoo import MODEL_TYPES, check, coverage, render, summary

DOC = Path(__file__).parent.parent / "docs" / "architectures.md"

# The types the coverage goal names explicitly (where the installed transformers has them): the paper's own GPT
# (XGLM), fused and multi-query projections, hybrids' attention layers, multi-head latent attention.
NAMED = [
    "xglm", "gpt_bigcode", "mpt", "codegen", "persimmon", "biogpt", "ctrl", "openai-gpt", "jetmoe",
    "gpt_neox_japanese", "jamba", "zamba2", "bamba", "granitemoehybrid", "nemotron_h", "lfm2", "olmo_hybrid",
    "qwen3_5_text", "qwen3_next", "recurrent_gemma", "deepseek_v3", "minicpm3", "glm4_moe_lite",
    "gpt2", "gpt_neox", "bloom", "falcon", "phi3", "llama", "opt", "gptj", "gpt_neo",
]  # fmt: skip


@pytest.mark.parametrize("model_type", [t for t in NAMED if t in MODEL_TYPES])
def test_named_type_is_supported(model_type):
    entry = check(model_type)
    assert (entry.kind, entry.status) == ("decoder", "supported"), entry


@pytest.mark.parametrize("model_type", ["mamba", "mamba2", "rwkv", "bart", "whisper"])
def test_attention_free_and_encoder_decoder_models_are_refused_in_one_line(model_type):
    from architecture_zoo import build
    from peft import get_peft_model

    from transformers_momentum.kv_tuning import KVTuningConfig

    entry = check(model_type)
    assert entry.kind in ("attention-free", "encoder-decoder") and entry.status == "refused", entry
    with pytest.raises(ValueError) as error:
        get_peft_model(build(model_type), KVTuningConfig())
    message = str(error.value)
    assert "\n" not in message and re.search(r"attention-free|encoder-decoder|no attention through", message)


def test_coverage_goal_and_table():
    """>= 95% of the decoder-only softmax-attention types supported; every refusal one line; the doc current."""
    entries = coverage()
    counts = summary(entries)
    supported, total = counts["decoder"]
    failed = [e for e in entries if e.status == "FAILED"]
    assert supported >= 0.95 * total, (supported, total, [(e.model_type, e.note) for e in failed])
    assert all("\n" not in e.note for e in entries)
    text = render(entries)
    if os.environ.get("TM_WRITE_ARCHITECTURES_DOC"):
        DOC.write_text(text)
    generated_with = re.search(r"Measured on transformers (\S+):", DOC.read_text())
    if generated_with is None or generated_with.group(1) != transformers.__version__:
        pytest.skip(
            f"docs/architectures.md was generated with another transformers release than {transformers.__version__}"
        )
    assert DOC.read_text() == text, "docs/architectures.md is stale: rerun with TM_WRITE_ARCHITECTURES_DOC=1"
