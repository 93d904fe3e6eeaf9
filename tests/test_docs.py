"""The docs name what the code has: every module of the package is in docs/ARCHITECTURE.md."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "superflow_lite"


def test_architecture_lists_every_module_and_subpackage():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = [f"`{p.name}`" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    packages = [f"`{p.name}/`" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    missing = [name for name in modules + packages if name not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not list {', '.join(missing)}"
