"""One analysis across processes (analysis/distributed.py): the evaluation examples split over the processes of a
launch and gathered back in order, so that the main process writes what a one-process run writes."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from analysis_fixtures import sst2_words

from transformers_momentum.analysis import distributed
from transformers_momentum.analysis.collect import KendallInputs, SeedCollector, join_shards
from transformers_momentum.analysis.engine import Observation
from transformers_momentum.analysis.icl import CandidateScores
from transformers_momentum.analysis.probe import ProbeRecord
from transformers_momentum.analysis.records import Records

# ------------------------------------------------------------------------------------------------ fake world


@pytest.mark.parametrize("processes", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 6, 7, 11])
def test_shares_reassemble_the_examples_in_order(processes, n):
    items = [f"example {i}" for i in range(n)]
    shares = [distributed.shard(items, process=p, processes=processes) for p in range(processes)]
    assert distributed.concatenate([s.items for s in shares]) == items
    assert [s.offset for s in shares] == [sum(len(s.items) for s in shares[:p]) for p in range(processes)]
    sizes = [len(s.items) for s in shares]
    # as accelerate's split_between_processes: the first n % processes processes take one example more
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1


def test_outside_a_launch_nothing_is_split_and_no_process_group_is_created(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.start() is None and not distributed.is_distributed() and distributed.is_main()
    share = distributed.shard([1, 2, 3])
    assert share.items == [1, 2, 3] and share.offset == 0
    assert distributed.gather({"a": 1}) == [{"a": 1}] and distributed.gather(5, to_main=True) == [5]
    moments = [torch.ones(2, 2), None]
    assert distributed.sum_tensors(moments) is moments
    state = {"k": torch.zeros(3)}
    assert distributed.broadcast(state) is state
    assert distributed.accelerator_device() is None
    calls = []
    distributed.main_only(lambda: calls.append(1))
    assert calls == [1] and not torch.distributed.is_initialized()


LAYERS, HEADS, HIDDEN, START, CONTEXT, VOCAB = 2, 2, 6, 1, 6, 11


def _observation(generator: torch.Generator, query_length: int, keys_before: int) -> Observation:
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    record = ProbeRecord(
        attention_output=randn(LAYERS, HIDDEN).float(),
        scores=[randn(HEADS, keys_before + query_length).float() for _ in range(LAYERS)],
        query=randn(LAYERS, HIDDEN).float(),
    )
    scores = CandidateScores(randn(2).numpy(), torch.log_softmax(randn(VOCAB).float(), -1))
    return Observation(scores, record)


def _synthetic_seed(n: int):
    """Examples and their observations (ZSL, ICL, two FT variants, one with Kendall inputs), and Kendall inputs."""
    generator = torch.Generator().manual_seed(0)
    examples, observations = [], []
    for i in range(n):
        length = 2 + i % 3
        examples.append({"label": i % 2})
        observations.append(
            {
                "zsl": _observation(generator, length, START),
                "icl": _observation(generator, length, CONTEXT),
                "gd": _observation(generator, length, START),
                "lcgd": _observation(generator, length, START),
            }
        )
    kendall = {
        "gd": KendallInputs(
            torch.tensor([1, 2, 3, 4]),
            torch.tensor([0, 1, 2, 3]),
            [torch.randn(5, HIDDEN, generator=generator) for _ in range(LAYERS)],
            "query",
            None,
        ),
        "lcgd": None,
    }
    return examples, observations, kendall


def _collect(examples, observations, kendall, offset: int, chunk: int):
    collector = SeedCollector(
        seed=3, bootstrap_seed=7, start=START, context_length=CONTEXT, num_layers=LAYERS, kendall=kendall,
        kendall_n=4, topk=2, output_topk=3, records=Records().begin("pretrained", 3), offset=offset,
    )  # fmt: skip
    for first in range(0, len(examples), chunk):
        part = observations[first : first + chunk]
        collector.add(
            examples[first : first + chunk],
            [o["zsl"] for o in part],
            [o["icl"] for o in part],
            {name: [o[name] for o in part] for name in ("gd", "lcgd")},
        )
    return collector


def _flat(values) -> dict[str, object]:
    """Every per-example list of `SeedValues`, by name."""
    out = {name: value for name, value in vars(values).items() if isinstance(value, list)}
    for name, variant in values.variants.items():
        out.update({f"{name}.{k}": v for k, v in vars(variant).items() if isinstance(v, list)})
        out.update({f"{name}.{k}": v for k, v in variant.per_layer.items()})
    return out


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_shares_of_a_seed_join_to_the_one_process_values_exactly(processes):
    """Random baselines (replayed generators), the shuffled-example null across share boundaries, Kendall τ's
    first kendall_n examples and the records: all as one collector of every example has them, bit for bit."""
    examples, observations, kendall = _synthetic_seed(7)
    whole = _collect(examples, observations, kendall, offset=0, chunk=3)
    parts, records = [], Records()
    for process in range(processes):
        share = distributed.shard(list(range(len(examples))), process=process, processes=processes)
        first, last = share.offset, share.offset + len(share.items)
        collector = _collect(examples[first:last], observations[first:last], kendall, share.offset, chunk=2)
        parts.append(collector.values)
        records.extend(collector.records)
    joined, expected = _flat(join_shards(parts)), _flat(whole.values)
    assert joined.keys() == expected.keys()
    for name, value in expected.items():
        assert len(joined[name]) == len(value) == 7, name
        for a, b in zip(joined[name], value, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.isnan(np.stack(expected["gd.simaou_shuffled_null"][1:])).any()  # boundaries filled in
    assert np.isnan(expected["gd.kendall"][4]).all() and not np.isnan(expected["gd.kendall"][3]).any()
    ours, theirs = records.to_arrays(), whole.records.to_arrays()
    assert list(ours) == list(theirs)
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


# ------------------------------------------------------------------------------------------------ real launch


def _command(model_dir: Path, out: Path) -> list[str]:
    return [
        "analyze", "--model", str(model_dir), "--task", "sst2", "--k", "2", "--n-eval", "7", "--seeds", "1", "2",
        "--lr-grid", "0.1", "1", "--n-tune", "5", "--kendall-n", "4", "--batch-size", "2", "--n-resamples", "500",
        "--save-records", "--no-plots", "--quiet", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _launch(prefix: list[str], arguments: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    command = [*prefix, "-m", "transformers_momentum", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _floats_close(a, b, path="") -> int:
    """Walk two JSON trees: the same keys, lengths and non-float values; floats within 1e-6. Returns the count."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        return sum(_floats_close(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, list):
        assert len(a) == len(b), path
        return sum(_floats_close(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)))
    if isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6, (path, a, b)
        return 1
    assert a == b, (path, a, b)
    return 0


@pytest.mark.slow
def test_two_cpu_processes_write_what_one_process_writes(tmp_path, word_tokenizer, tiny_llama):
    tokenizer = word_tokenizer(sst2_words())
    model_dir = tmp_path / "model"
    # initializer_range 0.2: predictions that differ between examples and settings, so equal ones mean something
    tiny_llama(len(tokenizer), initializer_range=0.2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun (part of torch) not found"

    started = time.perf_counter()
    _launch([sys.executable], _command(model_dir, tmp_path / "one" / "run"))
    one_s = time.perf_counter() - started
    two = _launch(
        [torchrun, "--standalone", "--nproc_per_node", "2"], _command(model_dir, tmp_path / "two" / "run")
    )
    print(f"one process {one_s:.1f} s, two {time.perf_counter() - started - one_s:.1f} s")

    # The main process alone wrote, once: one folder, its files, one summary line.
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["run"]
    written = sorted(p.name for p in (tmp_path / "two" / "run").iterdir())
    assert written == ["records.npz", "report.md", "results.json"]
    assert two.stdout.count("wrote ") == 1
    one, both = (json.loads((tmp_path / run / "run" / "results.json").read_text()) for run in ("one", "two"))
    assert one["run"]["processes"] == 1 and both["run"]["processes"] == 2
    for key in ("processes", "wall_seconds"):
        one["run"].pop(key), both["run"].pop(key)
    assert _floats_close(one, both) > 500  # every estimate, interval, per-layer and per-seed value

    # Per-example predictions (records.npz) equal; the recorded fp32 arrays within float32 noise (the shares are
    # batched differently: other padding).
    one_records, two_records = (np.load(tmp_path / run / "run" / "records.npz") for run in ("one", "two"))
    assert list(one_records) == list(two_records)
    predicted = [key for key in one_records if "/predicted/" in key or key.endswith("/gold")]
    assert len(predicted) > 10 and len({one_records[k].tolist().count(1) for k in predicted}) > 1
    for key in one_records:
        if key in predicted or key.endswith("query_offsets"):
            np.testing.assert_array_equal(one_records[key], two_records[key], err_msg=key)
        else:
            np.testing.assert_allclose(one_records[key], two_records[key], rtol=1e-5, atol=1e-5, err_msg=key)
