"""One analysis across processes: the evaluation examples split over the processes of a launch, the results gathered.

Under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1) every process runs the whole protocol on its own
copy of the model -- the same splits, demonstrations, learning-rate search and FT of every seed -- and evaluates
only its share of the examples:

* `shard` gives a process its contiguous share of a list, as accelerate's ``split_between_processes`` splits (the
  first ``n % world`` processes take one example more), with the share's offset in the whole list;
* `broadcast` makes every process use the main process's K/V deltas after each FT (on CPU the FT is deterministic
  and the deltas are equal anyway; GPU backward kernels need not be);
* `gather` hands the shares of all processes back in rank order (to every process, or with ``to_main`` to the main
  process only), `sum_tensors` adds up per-process sums (the K/V input moments of the evaluation tokens);
* `main_only` runs a check with side effects (creating ``--out``) on the main process alone and raises its error,
  if any, on every process.

So every process ends with the result of a one-process run, and the CLI lets the main process alone write it.
Without ``WORLD_SIZE`` (or with 1) nothing here imports accelerate or creates a process group: `shard` returns the
whole list, `gather` ``[part]``, `broadcast` and `sum_tensors` their argument.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")


def world_size() -> int:
    """Processes of this launch (``WORLD_SIZE``, set by torchrun and accelerate launch); 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_distributed() -> bool:
    return world_size() > 1


_STATE = None  # accelerate's PartialState, once `start` created it


def _state():
    """accelerate's process state, created (with the process group) on first use."""
    if not is_distributed():
        raise RuntimeError("no multi-process launch (WORLD_SIZE is unset or 1)")
    return start()


def start(cpu: bool | None = None):
    """Join the launch's process group (gloo on CPU, NCCL on GPUs) and return accelerate's `PartialState`; None
    without a multi-process launch. `cpu` forces CPU processes; by default they are CPU ones when the machine has
    no accelerator -- accelerate would otherwise report a single process on a CPU-only machine while torchrun
    started several."""
    global _STATE
    if not is_distributed():
        return None
    if _STATE is not None:
        return _STATE
    from accelerate import PartialState

    if cpu is None:
        has_accelerator = getattr(torch, "accelerator", None)
        cpu = not (has_accelerator.is_available() if has_accelerator else torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes != world_size():
        raise RuntimeError(
            f"WORLD_SIZE={world_size()} but accelerate set up {state.num_processes} process(es) "
            f"({state.distributed_type}); launch with torchrun or accelerate launch --multi_gpu, not --cpu."
        )
    _STATE = state
    return state


def rank() -> int:
    return _state().process_index if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def accelerator_device() -> str | None:
    """This process's own accelerator under a multi-process launch (``cuda:LOCAL_RANK``); None on CPU or alone."""
    if not is_distributed():
        return None
    device = _state().device
    return None if device.type == "cpu" else str(device)


def finish() -> None:
    """Leave the process group (the CLI's last step; the Python API leaves it to the caller)."""
    global _STATE
    if _STATE is not None:
        _STATE.destroy_process_group()
    _STATE = None


# ------------------------------------------------------------------------------------------------ split, gather


@dataclass(frozen=True)
class Shard(Generic[T]):
    """One process's share of a list: ``items == whole[offset : offset + len(items)]``."""

    items: list[T]
    offset: int


def shard(items: Sequence[T], *, process: int | None = None, processes: int | None = None) -> Shard[T]:
    """This process's contiguous share of `items` (`process` of `processes` override the launch's, for tests)."""
    processes = world_size() if processes is None else processes
    process = (rank() if processes > 1 else 0) if process is None else process
    size, extra = divmod(len(items), processes)
    first = process * size + min(process, extra)
    return Shard(list(items[first : first + size + (1 if process < extra else 0)]), first)


def gather(part: T, *, to_main: bool = False) -> list[T]:
    """Every process's `part`, in rank order: on every process, or with `to_main` on the main process only (the
    others get an empty list). Parts travel pickled."""
    if not is_distributed():
        return [part]
    if to_main:
        _state()
        parts: list[Any] | None = [None] * world_size() if is_main() else None
        torch.distributed.gather_object(part, parts, dst=0)
        return parts or []
    from accelerate.utils import gather_object

    _state()
    return gather_object([part])


def concatenate(parts: Sequence[Sequence[T]]) -> list[T]:
    """The gathered shares of a list as one list."""
    return [item for part in parts for item in part]


def _wire_device() -> torch.device:
    """Where tensors must be for the process group's collectives (NCCL: this process's GPU)."""
    state = _state()
    return torch.device("cpu") if state.backend in (None, "gloo") else state.device


def broadcast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The main process's `tensors` on every process (same names and shapes everywhere), each on its own device."""
    if not is_distributed():
        return tensors
    wire = _wire_device()
    result = {}
    for name, tensor in tensors.items():
        buffer = tensor.detach().to(wire, copy=True)
        torch.distributed.broadcast(buffer, src=0)
        result[name] = buffer.to(tensor.device)
    return result


def sum_tensors(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Element-wise, the sum over processes of `tensors` (the same length everywhere); None counts as zero (a
    process with no examples accumulated nothing), and stays None where every process has None."""
    if not is_distributed():
        return tensors
    shapes = gather([None if t is None else (tuple(t.shape), t.dtype) for t in tensors])
    wire, result = _wire_device(), []
    for i, tensor in enumerate(tensors):
        known = [process[i] for process in shapes if process[i] is not None]
        if not known:
            result.append(None)
            continue
        shape, dtype = known[0]
        buffer = (
            torch.zeros(shape, dtype=dtype, device=wire) if tensor is None else tensor.to(wire, copy=True)
        )
        torch.distributed.all_reduce(buffer)
        result.append(buffer.cpu())
    return result


def main_only(check: Callable[[], None]) -> None:
    """Run `check` on the main process only; the others wait for it, and every process raises the error it raised
    (same type when it can be rebuilt from its message), so a bad ``--out`` stops every process."""
    if not is_distributed():
        check()
        return
    error: Exception | None = None
    if is_main():
        try:
            check()
        except Exception as caught:  # re-raised below, on every process
            error = caught
    outcome = gather(None if error is None else (type(error), str(error)))[0]
    if error is not None:
        raise error
    if outcome is not None:
        error_type, message = outcome
        try:
            rebuilt = error_type(message)
        except Exception:
            rebuilt = RuntimeError(f"the main process failed: {message}")
        raise rebuilt


__all__ = [
    "Shard",
    "accelerator_device",
    "broadcast",
    "concatenate",
    "finish",
    "gather",
    "is_distributed",
    "is_main",
    "main_only",
    "rank",
    "shard",
    "start",
    "sum_tensors",
    "world_size",
]
