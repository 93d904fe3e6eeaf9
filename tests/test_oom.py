"""Out-of-memory handling at run time: a micro-batch halves until it fits, other errors pass."""
from __future__ import annotations

import logging

import pytest
import torch

from superflow_lite import oom


def test_retry_on_oom_halves_and_logs(caplog):
    calls = []

    def work(micro_batch):
        calls.append(micro_batch)
        if micro_batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"done at {micro_batch}"

    with caplog.at_level(logging.WARNING):
        result, size = oom.retry_on_oom(work, 8, logging.getLogger("test"), "sampling")
    assert (result, size, calls) == ("done at 2", 2, [8, 4, 2])
    assert [r.getMessage() for r in caplog.records] == [
        "sampling: out of memory at micro-batch 8; retrying at 4",
        "sampling: out of memory at micro-batch 4; retrying at 2"]


def test_retry_on_oom_gives_up_at_one_and_passes_other_errors():
    def always_oom(micro_batch):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        oom.retry_on_oom(always_oom, 4, logging.getLogger("test"))

    def broken(micro_batch):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        oom.retry_on_oom(broken, 4, logging.getLogger("test"))
    assert oom.retry_on_oom(lambda b: b * 10, 3, logging.getLogger("test")) == (30, 3)
