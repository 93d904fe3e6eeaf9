"""The package carries its data: a wheel built from this tree, installed without -e into a
fresh virtual environment, finds its built-in presets and activation measurements from a
folder outside the source tree (the way a GPU box installs it from a git URL)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ONLY = shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".hypothesis", "results")


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """A venv holding only the wheel's files; the dependencies come from this interpreter's
    site-packages through a .pth line (no network, no editable finder: that one is set up
    by a .pth file of its own, which a .pth-added folder does not run)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy, so the build leaves nothing in the working tree
    shutil.copytree(ROOT, source, ignore=SOURCE_ONLY)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / "dist").glob("superflow_lite-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    (Path(target) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp / "elsewhere"
    outside.mkdir()
    return python, outside, wheel


def run_installed(installed_wheel, *args: str) -> subprocess.CompletedProcess:
    python, outside, _ = installed_wheel
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(python), *args], cwd=outside, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_the_presets_and_measurements(installed_wheel):
    import zipfile

    names = zipfile.ZipFile(installed_wheel[2]).namelist()
    assert "superflow_lite/presets/24gb.yaml" in names and "superflow_lite/presets/tiny.yaml" in names
    assert "superflow_lite/data/activation_measurements.json" in names


def test_the_installed_package_is_the_wheels_not_the_source_tree(installed_wheel):
    proc = run_installed(installed_wheel, "-c", "import superflow_lite; print(superflow_lite.__file__)")
    assert proc.returncode == 0, proc.stderr
    where = Path(proc.stdout.strip())
    assert where.is_relative_to(installed_wheel[0].parent.parent) and not where.is_relative_to(ROOT)


def test_installed_wheel_plans_memory_for_the_24gb_preset(installed_wheel):
    proc = run_installed(installed_wheel, "-m", "superflow_lite.train", "--preset", "24gb", "--plan")
    assert proc.returncode == 0, proc.stderr
    assert "24" in proc.stdout and "GiB" in proc.stdout


def test_installed_wheel_prints_the_tiny_config(installed_wheel):
    import yaml

    proc = run_installed(installed_wheel, "-m", "superflow_lite.train", "--preset", "tiny", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["model"]["name_or_path"] == "world"
