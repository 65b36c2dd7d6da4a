"""No module of the operator service passes 300 lines.

The operator was one 1,083-line handlers module imported by most of the service (issue 24);
it is now split by area (handlers/, routes/, views/, console/pages/). Later issues add many
operator routes (identity, operator accounts): a module that grows past this bound is the
sign that a new area wants a module of its own, before it becomes the next lopsided file."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "services" / "operator"
MAX_LINES = 300


def test_no_operator_module_passes_300_lines() -> None:
    modules = sorted(OPERATOR.rglob("*.py"))
    assert len(modules) > 20  # the service's modules were found
    sizes = {str(m.relative_to(ROOT)): len(m.read_text(encoding="utf-8").splitlines()) for m in modules}
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not too_long, f"split these by area (at most {MAX_LINES} lines a module): {too_long}"
