"""The CLI: --print-config, --help-config, a full tiny run, and an existing run never overwritten."""
from __future__ import annotations

import json

import pytest
import yaml

from superflow_lite.rundir import read_metrics, read_status
from superflow_lite.train import main


def run_cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# The table of bad inputs (exit 2, one line, nothing created or changed) is test_launch_gate.py.


def test_empty_prompts_file_is_rejected(capsys, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    code, _, err = run_cli(capsys, ["--preset", "tiny", f"prompts.source={empty}", "--output", str(tmp_path / "r")])
    assert code == 2 and "holds no prompts" in err


def test_print_config_resolves_preset_file_and_overrides(capsys, tmp_path):
    user = tmp_path / "my.yaml"
    user.write_text("train:\n  lr: 1.0e-3\n  iterations: 7\n")
    code, out, _ = run_cli(capsys, ["--preset", "tiny", "--config", str(user), "train.lr=1e-4", "--print-config"])
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["train"]["lr"] == 1e-4  # CLI beats file
    assert cfg["train"]["iterations"] == 7  # file beats preset
    assert cfg["model"]["name_or_path"] == "world"  # preset beats defaults


def test_help_config_lists_every_key_with_its_reason(capsys):
    from superflow_lite.config_docs import config_fields

    code, out, _ = run_cli(capsys, ["--help-config"])
    assert code == 0
    for key, _, _, doc in config_fields():
        assert f"  {key} [" in out
    # The reason is config.py's own docstring under the field, not a copy.
    assert "Denoising steps T of a training rollout" in out.split("sampling.num_steps [", 1)[1].split("\n  ", 2)[1]


def test_existing_run_is_never_overwritten(capsys, tmp_path, fast_overrides):
    out = tmp_path / "run"
    assert main(["--preset", "tiny", "--no-progress", "--output", str(out), *fast_overrides, "train.iterations=1"]) == 0
    before = (out / "metrics.jsonl").read_text()
    code, _, err = run_cli(capsys, ["--preset", "tiny", "--output", str(out), *fast_overrides])
    assert code == 2 and "--resume" in err
    assert (out / "metrics.jsonl").read_text() == before


def test_tiny_run_writes_the_run_directory(capsys, tmp_path, fast_overrides):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, ["--preset", "tiny", "--no-progress", "--output", str(out), *fast_overrides])
    assert code == 0
    assert "pipe.load_lora_weights" in stdout and str(out / "lora") in stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["name_or_path"] == "world"
    rows = read_metrics(out)
    assert rows[0]["iteration"] == 0 and "eval/reward_mean" in rows[0]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert read_status(out)["state"] == "done"
    index = json.loads((out / "samples" / "000000" / "index.json").read_text())
    assert {"prompt", "seed", "reward", "file"} <= set(index[0])
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "lora" / "peft" / "adapter_model.safetensors").is_file()
    assert (out / "train.log").read_text().count("iteration") >= 2


def test_print_config_leaves_the_run_name_to_each_run(capsys, tmp_path):
    """A printed config, saved and run twice, gets two run folders, not one name twice."""
    code, out, _ = run_cli(capsys, ["--preset", "tiny", "--print-config"])
    assert code == 0 and yaml.safe_load(out)["output"]["name"] == ""
    code, out, _ = run_cli(capsys, ["--preset", "tiny", "output.name=mine", "--print-config"])
    assert yaml.safe_load(out)["output"]["name"] == "mine"


def test_every_bad_override_is_reported_at_once(capsys):
    code, _, err = run_cli(capsys, ["--preset", "tiny", "train.lr=fast", "train.learning_rate=1", "sampling.num_steps=x"])
    assert code == 2 and err.count("\n") == 1
    for words in ("train.lr: expected float", "unknown key 'train.learning_rate'", "sampling.num_steps: expected int"):
        assert words in err
    code, _, err = run_cli(capsys, ["--preset", "tiny", "train.lr=0", "train.iterations=0", "train.kl_beta=-1"])
    assert code == 2 and err.count("\n") == 1
    for words in ("train.lr must be > 0", "train.iterations must be > 0", "train.kl_beta must be >= 0"):
        assert words in err


def test_help_lists_the_task_presets(capsys, monkeypatch):
    from superflow_lite.config import task_presets

    monkeypatch.setenv("COLUMNS", "400")  # argparse would wrap inside "task-ocr" at its hyphen
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert task_presets() and all(name in out for name in task_presets())
