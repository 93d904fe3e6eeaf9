"""Renamed and retired config keys: read for one release, with a warning naming the new key."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from superflow_lite.config import REMOVED_KEYS, RENAMED_KEYS, ConfigError, build_config, config_from_dict, to_dict
from superflow_lite.config_docs import spec_table
from superflow_lite.train import main as train_main

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("old, new", sorted(RENAMED_KEYS.items()))
def test_an_old_key_on_the_command_line_sets_the_new_one_and_says_so(old, new, caplog):
    with caplog.at_level(logging.WARNING, logger="superflow_lite"):
        cfg = build_config("tiny", overrides=[f"{old}=40"])
    section, key = new.split(".")
    assert getattr(getattr(cfg, section), key) == 40
    assert f"{old} is renamed {new}" in caplog.text


def test_an_old_config_file_and_an_old_runs_config_still_load(tmp_path, caplog):
    old = {"superflow": {"prompts_per_iter": 3, "group_size": 4, "rollout_cap": 12, "m_max": 20},
           "output": {"log_every": 1}}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level(logging.WARNING, logger="superflow_lite"):
        from_file = build_config("tiny", str(path))
        written_before = {k: v for k, v in to_dict(build_config("tiny")).items() if k != "batch"}
        from_run = config_from_dict({**written_before, **old})  # a run's config.yaml with the old names
    for cfg in (from_file, from_run):
        assert (cfg.batch.prompts_per_iter, cfg.batch.group_size, cfg.batch.rollout_cap) == (3, 4, 12)
        assert cfg.superflow.m_max == 20
    assert "output.log_every is no longer used" in caplog.text
    assert "prompts_per_iter" not in to_dict(from_file)["superflow"]  # runs write the new names only


def test_both_names_in_one_file_is_one_clear_error_and_exit_2(tmp_path, capsys):
    # Overrides apply in order (the last one wins); one mapping holding both names is ambiguous.
    assert build_config("tiny", overrides=["superflow.group_size=4", "batch.group_size=6"]).batch.group_size == 6
    with pytest.raises(ConfigError, match="both superflow.group_size and batch.group_size are set"):
        config_from_dict({"superflow": {"group_size": 4}, "batch": {"group_size": 4}})
    path = tmp_path / "both.yaml"
    path.write_text("superflow: {group_size: 4}\nbatch: {group_size: 8}\n")
    assert train_main(["--preset", "tiny", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    assert "keep only batch.group_size" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_docs_switch_table_is_the_resolved_specs():
    # docs/ALGORITHM.md section 6 shows what each algorithm resolves to: the spec's own table.
    assert spec_table() in (DOCS / "ALGORITHM.md").read_text()


@pytest.mark.parametrize("key, kept", [(k, kept) for k, (kept, _) in sorted(REMOVED_KEYS.items())])
def test_a_removed_key_loads_at_its_kept_value_and_refuses_any_other(key, kept, tmp_path, caplog, capsys):
    """Every earlier run's config.yaml holds the kept value (the old default): it still loads
    (a resume must not break), with a warning. The other value, which did harm, is one clear
    error naming what to set instead, exit 2, before the run directory exists."""
    section, name = key.split(".")
    written_before = {**to_dict(build_config("tiny"))}
    written_before[section] = {**written_before[section], name: kept}
    with caplog.at_level(logging.WARNING, logger="superflow_lite"):
        cfg = config_from_dict(written_before)
    assert f"{key} is no longer used" in caplog.text and not hasattr(getattr(cfg, section), name)
    refused = f"{key}={str(not kept).lower()}"
    with pytest.raises(ConfigError, match=f"{key} was removed"):
        build_config("tiny", overrides=[refused])
    assert train_main(["--preset", "tiny", "--output", str(tmp_path / "run"), refused]) == 2
    err = capsys.readouterr().err
    assert "was removed" in err and "sampling.guidance_scale=1" in err
    assert not (tmp_path / "run").exists()
