"""AsyncRewardScorer: scoring on a worker thread, in order, overlapping the caller's work."""
from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np
import pytest
from PIL import Image

from superflow_lite.rewards.async_scorer import AsyncRewardScorer
from superflow_lite.rewards.base import Reward, RewardOutput


class SlowWidth(Reward):
    """Score = image width; sleeps `delay` seconds per batch and records its threads."""

    name = "slow_width"

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.threads: set[str] = set()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def score(self, images: Sequence[Image.Image], prompts, metadata) -> RewardOutput:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.threads.add(threading.current_thread().name)
            time.sleep(self.delay)
            if any(m.get("fail") for m in metadata):
                raise RuntimeError("scoring failed")
            return RewardOutput(np.array([im.width for im in images], dtype=np.float32))
        finally:
            with self._lock:
                self.active -= 1


def _batch(*widths: int) -> list[Image.Image]:
    return [Image.new("RGB", (w, 4)) for w in widths]


def test_results_in_order_on_a_worker_thread() -> None:
    reward = SlowWidth()
    with AsyncRewardScorer(reward) as scorer:
        futures = [scorer.submit(_batch(w, w + 1), ["p", "q"]) for w in (1, 10, 20)]
        results = [f.result(timeout=10).scores.tolist() for f in futures]
    assert results == [[1, 2], [10, 11], [20, 21]]
    assert reward.threads and threading.current_thread().name not in reward.threads
    assert reward.max_active == 1  # one batch at a time: models are not thread-safe


def test_scoring_overlaps_the_callers_work() -> None:
    delay = 0.3
    scorer = AsyncRewardScorer(SlowWidth(delay))
    start = time.perf_counter()
    future = scorer.submit(_batch(3), ["p"])
    submit_s = time.perf_counter() - start
    time.sleep(delay)  # "sampling the next micro-batch" while the reward runs
    future.result(timeout=10)
    total_s = time.perf_counter() - start
    scorer.close()
    assert submit_s < delay / 3
    assert total_s < 2 * delay * 0.9  # serial would take 2 x delay


def test_errors_surface_from_the_future_and_close_rejects() -> None:
    scorer = AsyncRewardScorer(SlowWidth())
    bad = scorer.submit(_batch(2), ["p"], [{"fail": True}])
    with pytest.raises(RuntimeError, match="scoring failed"):
        bad.result(timeout=10)
    good = scorer.submit(_batch(5), ["p"])  # the worker survives a failed batch
    assert good.result(timeout=10).scores.tolist() == [5]
    with pytest.raises(ValueError, match="1 images but 2 prompts"):
        scorer.submit(_batch(5), ["p", "q"]).result(timeout=10)
    scorer.close()
    with pytest.raises(RuntimeError, match="after close"):
        scorer.submit(_batch(1), ["p"])


def test_caller_may_reuse_its_lists() -> None:
    with AsyncRewardScorer(SlowWidth(0.1)) as scorer:
        images, prompts = _batch(7), ["p"]
        future = scorer.submit(images, prompts)
        images.clear()
        prompts.clear()
        assert future.result(timeout=10).scores.tolist() == [7]


def test_max_pending_bounds_the_queue() -> None:
    with AsyncRewardScorer(SlowWidth(0.2), max_pending=1) as scorer:
        scorer.submit(_batch(1), ["p"])
        start = time.perf_counter()
        scorer.submit(_batch(2), ["p"])  # blocks until the first batch is done
        assert time.perf_counter() - start > 0.1
    with pytest.raises(ValueError, match="max_pending"):
        AsyncRewardScorer(SlowWidth(), max_pending=0)
