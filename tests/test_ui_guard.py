"""The app's runs-folder guard: no spelling of an override moves a run out of the runs folder."""
from __future__ import annotations

import pytest
import yaml

from superflow_lite.config import ConfigError
from superflow_lite.ui.form import LaunchForm, app_owned_key, parse_extra
from superflow_lite.ui.manager import LaunchError, RunManager

ESCAPES = [
    "output.root=/tmp/elsewhere",
    "output.name=../../elsewhere",
    "output.name=",
    "output={root: /tmp/elsewhere}",
    "output={name: ../x}",
    "output={root: /tmp/elsewhere, name: x}",
    'output={"root": "/tmp/elsewhere"}',
    "output={eval_every: 1, root: /tmp/elsewhere}",
    "output={root: /tmp/elsewhere, eval_every: 1}",
    "output:\n  root: /tmp/elsewhere",  # not key=value: refused as an override
    "--output=/tmp/elsewhere",
    "--config=/tmp/x.yaml",
    "--resume=/tmp/x",
]


@pytest.mark.parametrize("override", ESCAPES)
def test_every_spelling_of_the_run_folder_is_refused(tmp_path, override):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "lock")
    with pytest.raises(ConfigError, match="the app sets output|must look like section.key=value"):
        manager.preview("tiny", [override], "ok")
    with pytest.raises(ConfigError, match="the app sets output|must look like section.key=value"):
        manager.resume("ok", [override])
    if "\n" not in override:  # the form's free-text box
        with pytest.raises(ConfigError, match="the app sets output|must look like section.key=value"):
            parse_extra(override)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("override", ["output.eval_every=2", "output={eval_every: 2, checkpoint_every: 2}",
                                      "train.lr=1e-4", "prompts.source=shapes"])
def test_other_output_keys_pass_and_the_run_stays_inside(tmp_path, override):
    assert app_owned_key(override) is None
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "lock")
    preview = manager.preview("tiny", [override], "inside")
    assert preview.run_path == manager.root / "inside"
    cfg = yaml.safe_load(preview.config_yaml)
    assert cfg["output"]["root"] == str(manager.root) and cfg["output"]["name"] == "inside"
    assert preview.train_args[-2:] == [f"output.root={manager.root}", "output.name=inside"]  # the app's keys win


def test_the_form_passes_its_free_text_through_the_same_guard(tmp_path):
    form = LaunchForm(preset="tiny", name="f", extra="train.lr=1e-4\noutput={root: /tmp/elsewhere}")
    with pytest.raises(ConfigError, match="the app sets output.root"):
        form.overrides(tmp_path / "uploads")


def test_a_name_that_leaves_the_folder_is_refused(tmp_path):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "lock")
    for name in ("../x", "/tmp/x", "a/b"):
        with pytest.raises(LaunchError):
            manager.preview("tiny", [], name)
