"""Both algorithms run through the same code path; superflow obeys the rollout cap."""
from __future__ import annotations

import pytest

from superflow_lite.rundir import read_metrics
from superflow_lite.train import main


@pytest.mark.parametrize("algorithm", ["superflow", "flow_grpo"])
def test_short_run_of_each_algorithm(tmp_path, fast_overrides, algorithm):
    out = tmp_path / algorithm
    overrides = [*fast_overrides, f"algorithm={algorithm}", "batch.rollout_cap=6", "batch.prompts_per_iter=3",
                 "output.eval_every=5", "output.checkpoint_every=5"]
    assert main(["--preset", "tiny", "--no-progress", "--output", str(out), *overrides]) == 0
    rows = [r for r in read_metrics(out) if r["iteration"] > 0]
    assert len(rows) == 2
    for row in rows:
        assert row["rollouts/iter"] <= 6
        assert sum(int(k) * v for k, v in row["group/size_hist"].items()) == row["rollouts/iter"]
        if algorithm == "flow_grpo":
            # Fixed G=2: the cap of 6 keeps 3 prompts of 2; no per-step weights.
            assert row["group/size_hist"] == {"2": 3}
            assert row["adv/step0/weight"] == 1.0
        else:
            assert row["adv/step0/weight"] > row["adv/step2/weight"]  # sigma_t weights decrease along the flow
