"""A real browser: headless Debian Chromium driven by Playwright opens the app and goes
launch -> watch -> stop -> resume -> compare -> download with a tiny run, asserting on
what each page shows. Screenshots go to the test's tmp dir, or to $SUPERFLOW_SCREENSHOTS
(docs/images for docs/APP.md)."""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest

from superflow_lite.ui.app import default_preset
from superflow_lite.ui.form import preset_values
from test_app_client import running_app
from test_ui_manager import TINY

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work on these machines (no network beyond the registries, run as root).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLOW_MS = 240_000  # a cold start of the trainer on 2 busy cores

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"),
]


@pytest.fixture
def app(tmp_path):
    yield from running_app(tmp_path)


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def shots_dir(tmp_path: Path) -> Path:
    shots = Path(os.environ.get("SUPERFLOW_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def assert_images_uncovered(page, gallery: str, count: int) -> None:
    """Each of the first `count` thumbnails: its caption lies below its image, and the
    gallery's label badge lies above it, so no text covers any part of an image."""
    label = page.locator(f"#{gallery} [data-testid='block-label']").first.bounding_box()
    for i in range(count):
        thumb = page.locator(f"#{gallery} .thumbnail-item").nth(i)
        image = thumb.locator("img").first.bounding_box()
        caption = thumb.locator(".caption-label").first.bounding_box()
        image_bottom = image["y"] + image["height"]
        assert caption["y"] >= image_bottom - 1, (gallery, i, image, caption)
        assert image["width"] > 50 and abs(image["height"] - image["width"]) <= 2, (gallery, i, image)  # square, whole
        if label is not None and label["x"] < image["x"] + image["width"]:
            assert label["y"] + label["height"] <= image["y"] + 1, (gallery, i, image, label)


def test_browser_launch_watch_stop_resume_compare_download(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    demo, manager = app
    shots = shots_dir(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.goto(demo.local_url)

        # Launch: the CPU's default job is preselected on a CPU machine; the form shows the preset's values.
        expect(page.locator("#launch")).to_be_visible(timeout=60_000)
        tiny_iterations = str(preset_values(default_preset())["iterations"])
        expect(field(page, "field-iterations")).to_have_value(tiny_iterations, timeout=30_000)  # the preset's own
        field(page, "run-name").fill("browser-run")
        field(page, "field-iterations").fill("200")
        field(page, "extra-overrides").fill("\n".join(TINY))
        page.get_by_role("button", name="Preview config and command").click()
        message = page.locator("#launch-message")
        expect(message).to_contain_text("Ready to launch", timeout=60_000)
        expect(message).to_contain_text(re.compile(r"Memory plan: predicted peak \d+\.\d\d GiB"))
        expect(page.get_by_text("output.name=browser-run").first).to_be_visible(timeout=30_000)
        page.screenshot(path=shots / "app_launch.png", full_page=True)
        page.locator("#launch").click()

        # Watch: progress, the evaluation plot, and before/after pairs with their rewards.
        progress = page.locator("#progress")
        expect(progress).to_contain_text("browser-run", timeout=SLOW_MS)
        expect(progress).to_contain_text(re.compile(r"running · iteration [1-9]\d*/200"), timeout=SLOW_MS)
        expect(page.locator("#samples img").nth(3)).to_be_visible(timeout=SLOW_MS)  # 2 prompts x (step 0, step 1)
        captions = page.locator("#samples .caption-label")
        expect(captions.nth(0)).to_contain_text(re.compile(r"^step 0 · \d\.\d{3}"))
        expect(captions.nth(1)).to_contain_text(re.compile(r"^step [1-9]\d* · \d\.\d{3}"))
        first, second = captions.nth(0).inner_text(), captions.nth(1).inner_text()
        assert first.split(" · ")[2:] == second.split(" · ")[2:]  # the same prompt and seed, side by side
        expect(page.locator("#sample-pairs")).to_contain_text("change")
        assert_images_uncovered(page, "samples", 4)
        expect(page.get_by_text("evaluation (test prompts)").first).to_be_attached()
        page.screenshot(path=shots / "app_watch.png", full_page=True)

        page.locator("#watch-stop").click()
        expect(progress).to_contain_text("stopped", timeout=SLOW_MS)

        # Runs: resume the stopped run, see it train again, stop it again.
        page.get_by_role("tab", name="Runs").click()
        expect(page.locator("#runs-table")).to_contain_text("browser-run", timeout=30_000)
        page.locator("#runs-resume").click()
        expect(page.locator("#runs-message")).to_contain_text("Resumed", timeout=30_000)
        details = page.locator("#run-details")
        expect(details).to_contain_text(re.compile(r"browser-run: (starting|running)"), timeout=30_000)
        expect(details).to_contain_text("browser-run: running", timeout=SLOW_MS)
        page.screenshot(path=shots / "app_runs.png", full_page=True)
        page.locator("#runs-stop").click()
        expect(details).to_contain_text("stopped", timeout=SLOW_MS)

        # Compare: base vs LoRA on the run's eval prompts and seeds, with rewards.
        page.get_by_role("tab", name="Compare").click()
        expect(field(page, "compare-prompts")).not_to_have_value("", timeout=30_000)
        page.locator("#compare-generate").click()
        expect(page.locator("#compare-summary")).to_contain_text(re.compile(r"Mean reward: base \*?\*?\d"), timeout=SLOW_MS)
        expect(page.locator("#compare-lora img").first).to_be_visible(timeout=30_000)
        expect(page.locator("#compare-lora .caption-label").first).to_contain_text("reward")
        assert_images_uncovered(page, "compare-base", 2)
        assert_images_uncovered(page, "compare-lora", 2)
        page.screenshot(path=shots / "app_compare.png", full_page=True)

        # Download: every LoRA format and the model card, zipped outside the run.
        page.get_by_role("tab", name="Runs").click()
        download_button = page.locator("#download-lora")
        expect(download_button).to_contain_text("browser-run-lora.zip", timeout=30_000)
        with page.expect_download() as download:
            download_button.click()
        saved = tmp_path / "downloaded-lora.zip"
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as zf:
            names = set(zf.namelist())
        assert {"lora/pytorch_lora_weights.safetensors", "lora/peft/adapter_model.safetensors",
                "lora/comfyui/browser-run.safetensors", "lora/README.md"} <= names
        assert not list((manager.root / "browser-run").glob("*.zip"))
        browser.close()
    print(f"screenshots: {shots}: {sorted(os.listdir(shots))}")
