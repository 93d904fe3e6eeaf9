"""Out-of-memory handling while a run goes: recognise an accelerator's OOM, free the cache,
and redo the unit of work smaller instead of ending the run.

retry_on_oom halves a sampling or training micro-batch, score_halving_on_oom splits a
reward batch on the scorer's thread, and agree_micro_batch keeps every process of a
multi-GPU run at the size the tightest one can hold. The memory plan (memory.py) chooses
the sizes they start from.
"""
from __future__ import annotations

import gc
import logging
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

# Allocation failures inside CUDA libraries reach Python as a plain RuntimeError whose text
# names the library's status, not "out of memory" (cuBLAS handles and workspaces, cuDNN
# workspaces); a smaller micro-batch needs smaller workspaces, so they are retried too.
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
               "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE", "cudaErrorMemoryAllocation", "CUFFT_ALLOC_FAILED")


def is_oom(err: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, from torch's allocator or a CUDA library."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(marker in str(err) for marker in OOM_MARKERS))


def free_cached_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def retry_on_oom(fn: Callable[[int], T], micro_batch: int, log: logging.Logger, what: str = "micro-batch") -> tuple[T, int]:
    """Run fn(micro_batch); on out-of-memory halve the micro-batch, log it, and run fn again.

    fn must redo its whole unit of work from the start at the size it is given (e.g. one
    chunk of rows in sub-chunks of that size; one minibatch's gradient accumulation after
    zero_grad). Returns (fn's result, the micro-batch that worked): keep the latter for the
    rest of the run. An OOM at micro-batch 1, or any other error, propagates.
    """
    size = micro_batch
    while True:
        try:
            return fn(size), size
        except Exception as err:
            if not is_oom(err) or size <= 1:
                raise
        # Out of the except block: the traceback (and the failed step's tensors) are released.
        failed, size = size, size // 2
        free_cached_memory()
        log.warning("%s: out of memory at micro-batch %d; retrying at %d", what, failed, size)


def score_halving_on_oom(reward, images: list, prompts: list, metadata: list | None, log: logging.Logger | None = None):
    """reward(images, prompts, metadata); on out-of-memory, free the cache and score each half
    apart (recursively, down to one image), concatenating the outputs in order.

    The reward runs on the scorer's thread beside sampling: its peak adds to the sampler's,
    and an OOM there would otherwise end the run from a worker thread. One image that does
    not fit propagates the error."""
    try:
        return reward(images, prompts, metadata)
    except Exception as err:
        if not is_oom(err) or len(images) <= 1:
            raise
    free_cached_memory()
    half = len(images) // 2
    (log or logging.getLogger("superflow_lite")).warning(
        "reward %s: out of memory on %d images; scoring %d and %d", getattr(reward, "name", "?"), len(images),
        half, len(images) - half)
    parts = [score_halving_on_oom(reward, images[a:b], prompts[a:b], None if metadata is None else metadata[a:b], log)
             for a, b in ((0, half), (half, len(images)))]
    import numpy as np

    out = parts[0]
    out.scores = np.concatenate([p.scores for p in parts])
    out.extras = {k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras}
    return out


def agree_micro_batch(micro_batch: int, accelerator) -> int:
    """The smallest micro-batch of all processes (an all-reduce min; itself with one process).

    retry_on_oom halves the micro-batch of the process that ran out of memory only; the
    others would go on at the larger size, sharding the same work into different numbers of
    forward/backward calls. Agreeing at each iteration's start keeps every rank at the size
    the tightest one can hold. (An OOM inside the synchronising backward itself cannot be
    retried on one rank while the others wait in the gradient all-reduce: the plan's headroom
    is what guards that.)"""
    if accelerator.num_processes == 1:
        return micro_batch
    t = torch.tensor([micro_batch], device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)  # accelerate's reduce has no min
    return int(t.item())
