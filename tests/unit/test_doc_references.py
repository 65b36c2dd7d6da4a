"""The project cites its own docs: no ``../shared/spec`` (the team's kit beside the
repository, not shipped with the product), no document that does not exist, and every
``docs/NAME.md#anchor`` names a heading of that document (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("shared", "services", "cli", "tests", "docs", "deploy", "agent", "examples")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".html", ".toml"}

# The Makefile's header points at the team's contract of make targets (what each one
# promises), which is not a rule of the product. Applied migrations cannot change: the
# runner refuses a migration whose text differs from what it applied (a checksum).
ALLOWED_KIT_CITATIONS = {"shared/migrations/0008_case_insensitive_hardware_ids.sql"}

_CITATION = re.compile(r"(?:docs/|\]\()([a-z0-9_-]+\.md)(?:#([a-z0-9_-]+))?")


def _files() -> list[Path]:
    found = [ROOT / "README.md"]
    for top in SOURCES:
        found += [p for p in (ROOT / top).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return found


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        text = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_no_citation_of_the_team_kit() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _files()
        if path != Path(__file__).resolve() and str(path.relative_to(ROOT)) not in ALLOWED_KIT_CITATIONS
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "shared/spec/" in line
    ]
    assert cited == [], "cite docs/domain.md (or the doc that holds the rule) instead"


def test_cited_documents_and_anchors_exist() -> None:
    docs = ROOT / "docs"
    anchors = {doc.name: _anchors(doc) for doc in docs.glob("*.md")}
    broken = []
    for path in _files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name, anchor in _CITATION.findall(line):
                if path.parent != docs and f"docs/{name}" not in line and name != "README.md":
                    continue  # a relative link outside docs/ names another folder's file
                if name not in anchors:
                    broken.append(f"{path.relative_to(ROOT)}:{number}: {name}")
                elif anchor and anchor not in anchors[name]:
                    broken.append(f"{path.relative_to(ROOT)}:{number}: {name}#{anchor}")
    assert broken == []
