"""Score rewards on a worker thread while the trainer samples the next micro-batch.

    scorer = AsyncRewardScorer(reward)
    pending = []
    for micro_batch in plan:
        images = sample(micro_batch)                   # GPU busy
        pending.append(scorer.submit(images, prompts, metadata))   # reward runs meanwhile
    outputs = [f.result() for f in pending]            # wait only for what is left
    scorer.close()

One worker thread, so batches are scored in submission order and a reward model never
runs two batches at once (models and OCR engines are not thread-safe). A thread and not a
process, so a GPU reward model shares the trainer's CUDA context and memory pool; torch,
onnxruntime and PIL release the GIL while they compute, so the overlap is real.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from PIL import Image

from ..oom import score_halving_on_oom
from .base import Reward, RewardOutput


class AsyncRewardScorer:
    """submit(images, prompts, metadata) -> Future[RewardOutput]; close() when done.

    max_pending bounds the batches waiting or being scored: submit blocks past it, so a
    slow reward holds back sampling instead of piling decoded images up in memory.
    """

    def __init__(self, reward: Reward, max_pending: int = 4):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.reward = reward
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{reward.name}")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._closed = False

    def submit(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        metadata: Sequence[dict] | None = None,
    ) -> Future[RewardOutput]:
        if self._closed:
            raise RuntimeError("AsyncRewardScorer.submit after close()")
        # Copies: the caller may reuse or clear its lists while the worker reads them.
        images, prompts = list(images), list(prompts)
        metadata = [dict(m) for m in metadata] if metadata is not None else None
        self._slots.acquire()
        try:
            # An OOM of a GPU reward halves its batch on the worker instead of ending the run.
            future = self._executor.submit(score_halving_on_oom, self.reward, images, prompts, metadata)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        return future

    def close(self, wait: bool = True) -> None:
        """Stop accepting work; with wait, finish what was submitted (else cancel the queue)."""
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> "AsyncRewardScorer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close(wait=True)
