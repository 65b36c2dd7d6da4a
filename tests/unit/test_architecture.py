"""The shape of the code, as import rules checked by Import Linter (the contracts are in
pyproject.toml under [tool.importlinter]; docs/architecture.md explains them): no
import cycle anywhere, no service importing another, the database driver only in
shared.db, pure domain rules, and one layering of every service's modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_every_import_contract_is_kept() -> None:
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    """The check can fail: a module that imports its own service's app breaks the layers
    and makes a cycle."""
    package = tmp_path / "services" / "demo"
    package.mkdir(parents=True)
    (tmp_path / "services" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text("from services.demo import handlers\n")
    (package / "handlers.py").write_text("from services.demo import app\n")
    config = tmp_path / ".importlinter"
    config.write_text(
        "[importlinter]\nroot_package = services\n\n"
        "[importlinter:contract:layers]\nname = layers\ntype = layers\n"
        "containers = services.demo\nlayers =\n    app\n    handlers\n"
    )
    done = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "services.demo.handlers is not allowed to import services.demo.app" in done.stdout
