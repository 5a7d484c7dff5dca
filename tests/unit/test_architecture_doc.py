"""docs/architecture.md stays true: the layer table lists exactly the packages of src/edgesplit."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "edgesplit"
DOC = ROOT / "docs" / "architecture.md"


def _layer_table(text: str) -> list[str]:
    section = text.split("## §1 Layers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_layer_list_equals_the_packages() -> None:
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    listed = _layer_table(DOC.read_text())
    assert len(listed) == len(set(listed)), f"a layer is listed twice: {listed}"
    assert sorted(listed) == packages


def test_code_cites_sections_that_exist() -> None:
    sections = set(re.findall(r"^## (§\d+)", DOC.read_text(), flags=re.MULTILINE))
    cited: set[str] = set()
    external = []
    for folder in ("src", "tests", "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            cited |= set(re.findall(r"docs/architecture\.md (§\d+)", text))
            if re.search(r"(?<!docs/)ARCHITECTURE\.md", text) and path.name != Path(__file__).name:
                external.append(str(path.relative_to(ROOT)))
    assert cited, "no code cites docs/architecture.md"
    assert external == [], (
        f"cite docs/architecture.md, not the external ARCHITECTURE.md: {external}"
    )
    assert cited <= sections, f"cited but missing: {sorted(cited - sections)}"


def test_readme_links_the_architecture() -> None:
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
    assert "ARCHITECTURE.md" not in (ROOT / "README.md").read_text()
