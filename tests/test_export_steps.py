"""LoRAs of intermediate iterations: written during the run (output.save_lora_every, the
newest output.keep_loras kept) and from a checkpoint afterwards (python -m
superflow_lite.export RUN --step N), in lora/'s formats; the final card shows samples."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from superflow_lite.checkpoint import load_checkpoint
from superflow_lite.export import main as export_main
from superflow_lite.rundir import list_checkpoints
from superflow_lite.train import main as train_main

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

FORMATS = ("pytorch_lora_weights.safetensors", "peft/adapter_model.safetensors", "peft/adapter_config.json", "README.md")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from conftest import FAST_OVERRIDES

    path = tmp_path_factory.mktemp("steps") / "run"
    assert train_main(["--preset", "tiny", "--no-progress", "--output", str(path), *FAST_OVERRIDES,
                       "train.iterations=3", "output.checkpoint_every=1", "output.eval_every=3",
                       "output.save_lora_every=1", "output.keep_loras=2"]) == 0
    return path


def has_every_format(folder: Path, name: str) -> bool:
    return all((folder / f).is_file() for f in FORMATS) and (folder / "comfyui" / f"{name}.safetensors").is_file()


def test_the_run_keeps_the_newest_intermediate_loras_in_every_format(run):
    assert sorted(p.name for p in (run / "loras").iterdir()) == ["000002", "000003"]  # keep_loras=2
    assert has_every_format(run / "loras" / "000002", "run-000002")
    assert "| iteration | 2 (an intermediate LoRA of the run) |" in (run / "loras" / "000002" / "README.md").read_text()
    final = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    last = load_file(run / "loras" / "000003" / "pytorch_lora_weights.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


def test_the_model_card_shows_before_and_after_samples(run):
    card = (run / "lora" / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card)
    assert "## Samples" in card and len(images) >= 2
    assert any("step0" in i for i in images) and any("step3" in i for i in images)
    assert all((run / "lora" / i).is_file() for i in images)
    prompts = re.findall(r"^\| (.+) \(seed \d+\) \|", card, re.M)
    assert len(prompts) == 2 and prompts[0] != prompts[1]  # two prompts, not one prompt's two seeds


def test_export_writes_a_checkpoints_lora_in_every_format(run, capsys):
    steps = sorted(int(re.search(r"(\d+)", p.name).group(1)) for p in list_checkpoints(run))
    step = steps[0]  # the older of the kept checkpoints, pruned from loras/ already
    assert export_main([str(run), "--step", str(step)]) == 0
    folder = run / "loras" / f"{step:06d}"
    assert has_every_format(folder, f"run-{step:06d}") and str(folder) in capsys.readouterr().out
    written = load_file(folder / "pytorch_lora_weights.safetensors")
    lora = load_checkpoint(next(p for p in list_checkpoints(run) if f"{step}" in p.name))["lora"]
    assert len(written) == len(lora)
    assert all(torch.equal(written[f"transformer.{k}"], v.float()) for k, v in lora.items())
    comfy = load_file(folder / "comfyui" / f"run-{step:06d}.safetensors")
    assert all(float(v) == 16.0 for k, v in comfy.items() if k.endswith(".alpha"))  # tiny: alpha 16, rank 8


def test_export_of_a_missing_step_says_which_there_are(run, capsys):
    assert export_main([str(run), "--step", "99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --step 99: ") and "it has: " in err and err.count("\n") == 1
