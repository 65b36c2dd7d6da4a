"""How the CLI prints: readable tables for people, one JSON document for scripts."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from cli.errors import CliError


def emit_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    print(table(rows, headers))


def confirm(question: str, *, assume_yes: bool) -> None:
    """Ask ``question`` on the terminal before something that cannot be undone; go on only
    on "y" or "yes". With ``assume_yes`` (``--yes``) nothing is asked; without a terminal
    to ask on (a script, a pipe) the command is refused, so a script never deletes by
    accident and never hangs waiting for an answer."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{question} Refused: no terminal to confirm on; add --yes to confirm")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled: nothing was changed")


_last_tenth: dict[str, int] = {}


def progress(done: int, total: int, label: str, width: int = 30) -> None:
    """Redraw a one-line progress bar on stderr (stdout stays clean for --json). When
    stderr is not a terminal (a log, CI), write a plain line every tenth instead."""
    if not sys.stderr.isatty():
        tenth = 10 * done // total if total else 10
        if _last_tenth.get(label) != tenth:
            _last_tenth[label] = tenth
            sys.stderr.write(f"{label}: {done}/{total}\n")
        return
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r{label} [{bar}] {done}/{total}{end}")
    sys.stderr.flush()
