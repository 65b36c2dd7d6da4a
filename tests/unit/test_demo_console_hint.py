"""``make demo`` says where the console is and how to sign in, without printing the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cli.commands.demo import SHOW_KEY, SHOW_OWNER_LINK, console_hint
from cli.endpoints import DEMO_OWNER

KEY = "frk_demo-key-1234"


def test_the_hint_gives_the_console_url_and_a_command_that_shows_the_key(tmp_path: Path) -> None:
    endpoints = {"FLEETREG_ADMIN_URL": "http://127.0.0.1:28081/", "FLEETREG_ADMIN_TOKEN": KEY}
    hint = "\n".join(console_hint(endpoints))
    assert "Console: http://127.0.0.1:28081/console/ " in hint
    assert "http://127.0.0.1:28081/console/live" in hint
    assert KEY not in hint
    assert DEMO_OWNER in hint and SHOW_OWNER_LINK in hint
    # the printed command, run where make demo runs, shows exactly the key
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "endpoints.env").write_text(
        f"FLEETREG_ADMIN_URL=http://127.0.0.1:28081\nFLEETREG_ADMIN_TOKEN={KEY}\nFLEETREG_BULK_URL=x\n"
    )
    shown = subprocess.run(
        ["/bin/sh", "-c", SHOW_KEY], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=10
    )
    assert shown.stdout == KEY + "\n"


def test_the_demos_factory_line_derives_the_servers_device_key() -> None:
    """``make demo`` prints how a factory derives a key offline: that sh, run with a group
    key, gives the key the server derives."""
    from cli.commands.demo import FACTORY_SH
    from shared.domain.derived_keys import derive_device_key, new_group_key

    group_key = new_group_key()
    shown = subprocess.run(
        ["/bin/sh", "-c", FACTORY_SH.format(hardware_id="b827eb8905e5")],
        env={"GROUP_KEY": group_key, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert shown.stdout == derive_device_key(group_key, "b827eb8905e5")
