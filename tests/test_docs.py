"""The docs name what the code has (every module of the package is in docs/ARCHITECTURE.md), and
their links into benchmarks/RESULTS.md land on a heading."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "superflow_lite"


def test_architecture_lists_every_module_and_subpackage():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    modules = [f"`{p.name}`" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    packages = [f"`{p.name}/`" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    missing = [name for name in modules + packages if name not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not list {', '.join(missing)}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_into_results_md_point_at_headings_it_has():
    """A heading renamed in benchmarks/RESULTS.md would leave the README's figures linking nowhere."""
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    anchors = {github_anchor(line.lstrip("#")) for line in results.splitlines() if line.startswith("#")}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        links = re.findall(r"RESULTS\.md#([\w\-]+)", doc.read_text())
        broken = [a for a in links if a not in anchors]
        assert not broken, f"{doc.name} links to RESULTS.md#{', #'.join(broken)}, which no heading gives"
