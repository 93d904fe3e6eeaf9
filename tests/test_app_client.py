"""The app through gradio_client on 127.0.0.1: preview, launch, refusal of a second run,
status, download, compare (base vs LoRA, with the scale slider), delete, file serving."""
from __future__ import annotations

import os
import socket
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402

from superflow_lite.ui.app import launch  # noqa: E402
from superflow_lite.ui.form import COMMON_FIELDS  # noqa: E402
from superflow_lite.ui.manager import RunManager  # noqa: E402
from test_ui_manager import TINY, kill_leftovers, wait_for  # noqa: E402


# gradio's own queue code trips pandas 3 deprecations; not ours to fix.
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def form(name: str, iterations: int | None, extra: list[str] = TINY) -> list:
    """The Launch tab's inputs: preset, algorithm, name, reward, prompts, prompt file, common fields, more overrides."""
    common = {n: None for n in COMMON_FIELDS} | {"iterations": iterations}
    return ["tiny", "", name, "", "", None, *common.values(), "\n".join(extra)]


def running_app(tmp_path):
    """The app on 127.0.0.1 with its own runs folder and machine lock; closed afterwards,
    and any run it left ends with it."""
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock")
    demo = launch(manager, port=free_port(), block=False)
    yield demo, manager
    demo.close()
    kill_leftovers(manager.root)


@pytest.fixture
def app(tmp_path):
    yield from running_app(tmp_path)


def test_app_through_gradio_client(app, tmp_path):
    demo, manager = app
    assert demo.local_url.startswith("http://127.0.0.1:")  # this machine only, by default
    client = Client(demo.local_url, verbose=False)

    message, command, config = client.predict(*form("bad", 0), api_name="/preview")
    assert message == "**error:** train.iterations must be > 0, got 0" and command == "" and config == ""
    message, command, config = client.predict(*form("c1", 1), api_name="/preview")
    assert command.startswith("python -m superflow_lite.train --preset tiny ") and "train.iterations=1" in command
    assert "iterations: 1" in config

    prompt_file = tmp_path / "my prompts.txt"
    prompt_file.write_text("a red circle\na blue square\n")
    upload = form("up", 1)
    upload[5] = handle_file(str(prompt_file))  # after preset, algorithm, name, reward, prompts
    command = client.predict(*upload, api_name="/preview")[1]
    stored = next((manager.root / ".uploads").glob("prompts-*.txt"))
    assert f"prompts.source={stored}" in command and stored.read_text() == prompt_file.read_text()

    message = client.predict(*form("c1", 1), api_name="/launch")[0]
    assert message.startswith("Started **c1**")
    refused = client.predict(*form("c2", 1), api_name="/launch")[0]
    assert "one run at a time" in refused

    run = manager.root / "c1"
    wait_for(lambda: client.predict("c1", api_name="/status")["state"] == "done", 240, "run c1 to finish", run)
    (listed,) = client.predict(api_name="/runs")
    assert listed["name"] == "c1" and listed["iteration"] == 1 and listed["has_lora"]

    # Files come only from the runs folder.
    sample = next(run.glob("samples/000000/*.png"))
    base = demo.local_url.rstrip("/") + "/gradio_api/file="
    assert httpx.get(base + str(sample)).status_code == 200
    for outside in ("/etc/passwd", str(tmp_path / "train.lock"), str(manager.root / ".." / "train.lock")):
        assert httpx.get(base + outside).status_code == 403

    button = client.predict("c1", api_name="/download")  # the DownloadButton's update
    assert button["interactive"] and button["label"] == "Download LoRA (c1-lora.zip)"
    with zipfile.ZipFile(button["value"]) as zf:
        assert "lora/pytorch_lora_weights.safetensors" in zf.namelist()

    prompts, seeds = client.predict("c1", api_name="/compare_defaults")
    assert prompts and seeds == "0, 1, 2, 3"  # the run's eval seeds (the tiny preset's)
    typed = prompts + "\na blue square"
    base_images, lora_images, table, summary = client.predict("c1", typed, "0, 1", 1.0, None, api_name="/compare")
    assert len(base_images) == len(lora_images) == 2 * len(typed.splitlines())
    assert "reward" in base_images[0]["caption"] and summary.startswith("Mean reward")
    assert table["headers"] == ["prompt", "seed", "base reward", "LoRA reward", "difference"]
    # At scale 0 the LoRA contributes nothing: the same seeds give the base images.
    base0, lora0, _, _ = client.predict("c1", "a blue square", "1", 0.0, None, api_name="/compare")
    a, b = (np.asarray(Image.open(x[0]["image"]), dtype=np.int16) for x in (base0, lora0))
    assert np.abs(a - b).max() <= 1

    assert client.predict("c1", api_name="/delete") == "Deleted **c1**."
    assert not run.exists()
