"""A real browser: headless Debian Chromium driven by Playwright opens the app, launches a
tiny run, sees progress and the first samples, stops it, opens the comparison, downloads
the LoRA and resumes the run. Screenshots go to the test's tmp dir (printed at the end)."""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest

from superflow_lite.ui.form import preset_values
from test_app_client import running_app
from test_ui_manager import TINY

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work on these machines (no network beyond the registries, run as root).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLOW_MS = 240_000  # a cold start of the trainer on 2 busy cores

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"),
]


@pytest.fixture
def app(tmp_path):
    yield from running_app(tmp_path)


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def test_browser_launch_watch_stop_compare(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    demo, manager = app
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(60_000)
        page.goto(demo.local_url)

        # Launch: the tiny world is preselected on a CPU machine; the form shows the preset's values.
        expect(page.locator("#launch")).to_be_visible(timeout=60_000)
        tiny_iterations = str(preset_values("tiny")["iterations"])
        expect(field(page, "field-iterations")).to_have_value(tiny_iterations, timeout=30_000)  # the preset's own
        field(page, "run-name").fill("browser-run")
        field(page, "field-iterations").fill("200")
        field(page, "extra-overrides").fill("\n".join(TINY))
        page.get_by_role("button", name="Preview config and command").click()
        expect(page.get_by_text("Ready to launch").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("output.name=browser-run").first).to_be_visible(timeout=30_000)
        page.screenshot(path=shots / "1-launch-preview.png", full_page=True)
        page.locator("#launch").click()

        # Watch: progress, then the step-0 baseline and the first eval step's samples.
        progress = page.locator("#progress")
        expect(progress).to_contain_text("browser-run", timeout=SLOW_MS)
        expect(progress).to_contain_text(re.compile(r"running · iteration [1-9]\d*/200"), timeout=SLOW_MS)
        expect(page.locator("#samples img").nth(3)).to_be_visible(timeout=SLOW_MS)  # 2 prompts x (baseline + step 1)
        expect(page.get_by_text("baseline (step 0)").first).to_be_attached(timeout=30_000)
        page.screenshot(path=shots / "2-watch-running.png", full_page=True)

        page.locator("#watch-stop").click()
        expect(progress).to_contain_text("stopped", timeout=SLOW_MS)
        page.screenshot(path=shots / "3-watch-stopped.png", full_page=True)

        # Compare: base vs LoRA on the run's eval prompts and seeds.
        page.get_by_role("tab", name="Compare").click()
        expect(field(page, "compare-prompts")).not_to_have_value("", timeout=30_000)
        page.locator("#compare-generate").click()
        expect(page.locator("#compare-summary")).to_contain_text("Mean reward", timeout=SLOW_MS)
        expect(page.locator("#compare-lora img").first).to_be_visible(timeout=30_000)
        page.screenshot(path=shots / "4-compare.png", full_page=True)

        # Runs: download the LoRA, then resume the run and stop it again.
        page.get_by_role("tab", name="Runs").click()
        expect(page.locator("#runs-table")).to_contain_text("browser-run", timeout=30_000)
        download_button = page.locator("#download-lora")
        expect(download_button).to_contain_text("browser-run-lora.zip", timeout=30_000)
        with page.expect_download() as download:
            download_button.click()
        saved = tmp_path / "downloaded-lora.zip"
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as zf:
            assert "lora/pytorch_lora_weights.safetensors" in zf.namelist()
        page.locator("#runs-resume").click()
        expect(page.locator("#runs-message")).to_contain_text("Resumed", timeout=30_000)
        expect(page.locator("#run-details")).to_contain_text("browser-run: starting", timeout=30_000)
        page.screenshot(path=shots / "5-runs-resumed.png", full_page=True)
        page.locator("#runs-stop").click()
        expect(page.locator("#run-details")).to_contain_text("stopp", timeout=30_000)
        browser.close()
    print(f"screenshots: {shots}: {sorted(os.listdir(shots))}")
