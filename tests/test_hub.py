"""hub.find_missing: local paths, the cache, and the hub when online (mocked: no network here)."""
from __future__ import annotations

import pytest

from superflow_lite import hub
from superflow_lite.hub import Needed


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "in_cache", lambda needed: False)


def test_a_local_copy_is_available_and_a_missing_path_is_not(tmp_path):
    assert hub.find_missing(Needed(str(tmp_path), hub.WEIGHT_FILES, "x")) is None
    missing = hub.find_missing(Needed(str(tmp_path / "nope"), hub.WEIGHT_FILES, "x"))
    assert missing and missing.why == "no such file or folder"


def test_online_a_model_on_the_hub_is_available(online, monkeypatch):
    monkeypatch.setattr("huggingface_hub.file_exists", lambda repo, f, revision=None: f == "pytorch_model.bin")
    assert hub.find_missing(Needed("org/model", hub.WEIGHT_FILES, "x")) is None


def test_online_an_unreachable_hub_or_absent_model_is_missing(online, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("no route")

    monkeypatch.setattr("huggingface_hub.file_exists", unreachable)
    assert "cannot be reached" in hub.find_missing(Needed("org/model", hub.WEIGHT_FILES, "x")).why
    monkeypatch.setattr("huggingface_hub.file_exists", lambda *a, **k: False)
    assert "not on the Hugging Face hub" in hub.find_missing(Needed("org/model", hub.WEIGHT_FILES, "x")).why


def test_the_message_names_each_model_once_and_one_command_for_all():
    why = "not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    missing = [hub.Missing(Needed("a/b", (), "model.name_or_path"), why),
               hub.Missing(Needed("c/d", (), "reward.options.r.model_name_or_path"), why),
               hub.Missing(Needed("c/d", (), "reward.options.r.model_name_or_path"), why)]
    text = hub.missing_message(missing)
    assert text.count("'c/d'") == 1 and text.count(why) == 1
    assert "`hf download a/b && hf download c/d`" in text
