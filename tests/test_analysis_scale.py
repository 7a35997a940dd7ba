"""The analyzer at scale: mixed precision (fp32 deltas under bf16 forwards), offloaded and sharded models
(accelerate device maps with disk offload, --max-memory), and the attention geometry the engine reads once."""

import json

import numpy as np
import pytest
import torch
from analysis_fixtures import sst2_words
from peft import get_peft_model

from transformers_momentum.analysis import (
    AnalysisConfig,
    AnalysisInputError,
    ModelArguments,
    PromptLayout,
    analyze,
    get_task,
    kv_finetune,
    load_model,
    load_task_data,
)
from transformers_momentum.analysis.engine import Engine
from transformers_momentum.analysis.geometry import AttentionGeometry
from transformers_momentum.analysis.loading import parse_max_memory
from transformers_momentum.cli import main as cli_main
from transformers_momentum.kv_tuning import KVTuningConfig, KVTuningLayer


@pytest.fixture(scope="module")
def tokenizer(word_tokenizer):
    return word_tokenizer(sst2_words())


@pytest.fixture(scope="module")
def layout(tokenizer):
    return PromptLayout(tokenizer, get_task("sst2"))


@pytest.fixture(scope="module")
def sst2():
    data = load_task_data("sst2")
    return list(data.train.select(range(4))), list(data.eval.select(range(8)))


def _config(**overrides) -> AnalysisConfig:
    fields = dict(task="sst2", k=2, n_eval=4, lr=0.05, seeds=[1], controls=[], progress=False, n_resamples=99)
    return AnalysisConfig(**{**fields, **overrides})


def _finetune(model, layout, demos, examples, lr):
    """(deltas after FT, FT predictions, FT candidate scores) through the engine, which closes afterwards."""
    engine = Engine(model, layout, _config())
    try:
        state, _ = engine.finetune([layout.ft_sequence(d) for d in demos], lr)
        scores = engine.predictions(layout.zero_shot_context(), examples, state)
    finally:
        engine.close()
    return state, [s.predicted for s in scores], torch.tensor(np.stack([s.scores for s in scores]))


# ------------------------------------------------------------------------------------------------ mixed precision


def test_bf16_forwards_train_fp32_deltas_that_match_the_fp32_run(tiny_llama, tokenizer, layout, sst2):
    demos, examples = sst2
    fp32, _, _ = _finetune(tiny_llama(len(tokenizer)), layout, demos, examples, 1e-2)
    bf16, _, _ = _finetune(tiny_llama(len(tokenizer)).to(torch.bfloat16), layout, demos, examples, 1e-2)
    assert {p.dtype for p in bf16.values()} == {torch.float32}
    a = torch.cat([v.flatten() for v in fp32.values()])
    b = torch.cat([v.flatten() for v in bf16.values()])
    # Only the forwards (and so the gradients) differ: measured 0.6% relative difference on this model.
    assert float((a - b).norm() / a.norm()) < 2e-2


def test_updates_below_bf16_resolution_are_kept(tiny_llama, tokenizer, layout, sst2):
    """A model cast to bf16 after wrapping has bf16 deltas: FT upcasts them to fp32 master weights first, so an SGD
    step far below bf16's spacing (2^-8 at 0.5) still moves every delta; stored in bf16 it would be rounded away."""
    model = get_peft_model(tiny_llama(len(tokenizer)), KVTuningConfig()).to(torch.bfloat16)
    deltas = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in deltas} == {torch.bfloat16}
    with torch.no_grad():
        for p in deltas:
            p.fill_(0.5)
    kv_finetune(model, [layout.ft_sequence(sst2[0][0])], lr=0.1)
    assert {p.dtype for p in deltas} == {torch.float32}
    for p in deltas:
        change = (p.detach() - 0.5).abs()
        assert 0 < float(change.max()) < 2**-9  # moved, by less than half a bf16 step
        assert torch.equal(p.detach().to(torch.bfloat16), torch.full_like(p, 0.5, dtype=torch.bfloat16))


def test_layer_keeps_fp32_deltas_without_peft_autocast(tiny_llama):
    model = get_peft_model(tiny_llama().to(torch.bfloat16), KVTuningConfig(), autocast_adapter_dtype=False)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    layer = next(m for m in model.modules() if isinstance(m, KVTuningLayer))
    x = torch.randn(1, 3, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.kv_tuning_weight["default"].normal_(std=1e-2)
        # the base output and the fp32 delta output are summed in fp32 and rounded once
        expected = (layer.base_layer(x).float() + x.float() @ layer.kv_tuning_weight["default"].T).bfloat16()
        assert torch.equal(layer(x), expected)


def test_autocast_keeps_fp32_weights_and_the_delta_output_in_fp32(model_dir, tiny_llama, layout, sst2):
    """--dtype bf16 --autocast: fp32 weights, every engine forward under torch.autocast(bf16); the K/V layer does not
    fold ΔW into W there (the cast of W + ΔW would round ΔW away) but adds its fp32 output to the bf16 base output."""
    demos, examples = sst2
    model, _ = load_model(str(model_dir), dtype="bf16", autocast=True, device="cpu", progress=False)
    assert {p.dtype for p in model.parameters()} == {
        torch.float32
    } and model.tm_autocast_dtype == torch.bfloat16
    whole, _ = load_model(str(model_dir), device="cpu", progress=False)
    fp32 = _finetune(whole, layout, demos, examples, 1e-2)[0]
    mixed = _finetune(model, layout, demos, examples, 1e-2)[0]
    a = torch.cat([v.flatten() for v in fp32.values()])
    b = torch.cat([v.flatten() for v in mixed.values()])
    assert 0 < float((a - b).norm() / a.norm()) < 2e-2  # the forwards did run in bf16, and FT tracks fp32
    # The whole analysis runs (the probe records in fp32 inside autocast forwards) and says how it ran.
    run = analyze(model, layout.tokenizer, _config(controls=["lcgd"])).run
    assert (run["dtype"], run["autocast"]) == ("float32", "bfloat16")

    layer = next(
        m for m in get_peft_model(tiny_llama(), KVTuningConfig()).modules() if isinstance(m, KVTuningLayer)
    )
    x = torch.randn(1, 3, 32)
    with torch.no_grad():
        layer.kv_tuning_weight["default"].normal_(std=1e-3)
        delta_output = x @ layer.kv_tuning_weight["default"].T  # fp32, outside autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = (layer.base_layer(x).float() + delta_output).bfloat16()
            assert torch.equal(layer(x), expected)


# ------------------------------------------------------------------------------------------------ offloading


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_llama, tokenizer):
    path = tmp_path_factory.mktemp("tiny_llama_offload")
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SOME_ON_DISK = {
    "model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
    "model.norm": "cpu", "lm_head": "cpu",
}  # fmt: skip


@pytest.mark.parametrize("device_map", [SOME_ON_DISK, {"": "disk"}], ids=["one_block_on_disk", "all_on_disk"])
def test_finetuning_an_offloaded_model_equals_the_whole_model(model_dir, layout, sst2, tmp_path, device_map):
    demos, examples = sst2
    whole, _ = load_model(str(model_dir), device="cpu", progress=False)
    expected = _finetune(whole, layout, demos, examples, 1e-2)
    offloaded, _ = load_model(str(model_dir), device_map=device_map, offload_folder=tmp_path, progress=False)
    assert any(p.is_meta for p in offloaded.parameters())  # the weights really are on disk
    state, predicted, scores = _finetune(offloaded, layout, demos, examples, 1e-2)
    assert {p.device.type for p in state.values()} == {"cpu"}  # the execution device, not meta
    # The offloaded layer adds x ΔWᵀ to its base output; the whole model folds ΔW into W: rounding differs only.
    for name, value in expected[0].items():
        torch.testing.assert_close(state[name], value, atol=1e-6, rtol=0)
    assert predicted == expected[1]
    torch.testing.assert_close(scores, expected[2], atol=1e-5, rtol=0)


def test_max_memory_offloads_to_disk_and_the_analysis_equals_the_whole_model(model_dir, tokenizer, tmp_path):
    out, folder = tmp_path / "run", tmp_path / "offload"
    code = cli_main(["analyze", "--model", str(model_dir), "--task", "sst2", "--k", "2", "--n-eval", "3", "--lr",
                     "0.05", "--seeds", "1", "--controls", "lcgd", "--max-memory", "cpu=950KB", "--offload-folder",
                     str(folder), "--no-plots", "--quiet", "--out", str(out)])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    # the embeddings (and here one block) fit the 950 KB; the rest is read from disk at each forward
    assert "disk" in results["run"]["devices"]
    whole, _ = load_model(str(model_dir), device="cpu", progress=False)
    expected = analyze(whole, tokenizer, _config(n_eval=3, controls=["lcgd"])).models["pretrained"]
    for variant in (
        "gd",
        "lcgd",
    ):  # the FT losses, SimAOU and weight space (offloaded weights read from disk)
        offloaded, reference = (
            results["models"]["pretrained"]["comparisons"][variant],
            expected.comparisons[variant],
        )
        assert offloaded["accuracy_ft"]["mean"] == reference.accuracy_ft.mean
        np.testing.assert_allclose(offloaded["ft_losses"], reference.ft_losses, atol=1e-5, rtol=0)
        assert offloaded["simaou"]["mean"] == pytest.approx(reference.simaou.mean, abs=1e-5)
        np.testing.assert_allclose(
            offloaded["weight_space"]["per_layer_head"],
            reference.weight_space.per_layer_head,
            atol=1e-5,
            rtol=0,
        )


def test_untrained_control_on_an_offloaded_model_is_refused(model_dir, tmp_path):
    model, tokenizer = load_model(
        str(model_dir), device_map={"": "disk"}, offload_folder=tmp_path, progress=False
    )
    with pytest.raises(AnalysisInputError, match="offloaded weights"):
        analyze(model, tokenizer, _config(controls=["untrained"]))


def test_max_memory_is_parsed_into_what_from_pretrained_takes():
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=60GiB,disk=900GB") == {
        0: "20GiB", 1: "20GiB", "cpu": "60GiB", "disk": "900GB",
    }  # fmt: skip
    assert parse_max_memory("CPU=1000") == {"cpu": 1000}
    for text, message in (
        ("gpu=1GB", "neither a GPU index"),
        ("0=lots", "is not a size"),
        ("0=1GB,0=2GB", "given twice"),
        ("cpu", "is not DEVICE=SIZE"),
        ("0=1GB,", "is not DEVICE=SIZE"),
    ):
        with pytest.raises(AnalysisInputError, match=message):
            parse_max_memory(text)
    with pytest.raises(AnalysisInputError, match="neither a GPU index"):  # before anything is loaded
        ModelArguments(model="m", max_memory="cuda=1GB")


# ------------------------------------------------------------------------------------------------ geometry


def test_the_engine_reads_the_geometry_once_and_hands_it_down(tiny_llama, tokenizer, monkeypatch):
    calls = []
    original = AttentionGeometry.of.__func__

    def counted(cls, model):
        calls.append(type(model).__name__)
        return original(cls, model)

    monkeypatch.setattr(AttentionGeometry, "of", classmethod(counted))
    analyze(tiny_llama(len(tokenizer)), tokenizer, _config(controls=["lcgd"]))
    assert len(calls) == 1  # once for the model, shared by the engine, probe, moments, scorer and FT loop

    engine = Engine(tiny_llama(len(tokenizer)), PromptLayout(tokenizer, get_task("sst2")), _config())
    try:
        geometry = engine.geometry
        assert engine.probe.geometry is geometry and engine.moments.geometry is geometry
        assert engine.scorer.geometry is geometry
        assert (geometry.num_layers, geometry.heads, geometry.kv_heads, geometry.head_dim) == (2, 4, 2, 8)
        assert geometry.rotates_queries and geometry.input_device == torch.device("cpu")
    finally:
        engine.close()
