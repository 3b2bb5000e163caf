"""How every command prints: human text through rich, or one JSON object with --json.

Results go to stdout, errors and progress to stderr, so `gkit ... --json | jq` always sees
exactly one JSON document, success or failure.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

from granite_ops_kit.errors import GkitError


@dataclass
class OutputState:
    json: bool = False


state = OutputState()


@cache
def _console(to_stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=to_stderr, highlight=False, soft_wrap=True)


def __getattr__(name: str):
    """`output.stdout` / `output.stderr`, made on first use: rich costs ~50 ms to import,
    which every command that prints nothing human-readable (--json) should not pay."""
    if name in ("stdout", "stderr"):
        return _console(name == "stderr")
    raise AttributeError(name)


def use_json(flag: bool) -> None:
    """A command's own --json and the global one both switch JSON on; neither switches it off."""
    state.json = state.json or flag


def emit(result: dict, render: Callable[[Console], None]) -> None:
    """Print a successful result: JSON (with ok: true) or the human rendering."""
    if state.json:
        sys.stdout.write(json.dumps({"ok": True, **result}, indent=2, default=str) + "\n")
    else:
        render(_console(False))


def report_error(error: GkitError) -> None:
    if state.json:
        sys.stdout.write(json.dumps(error.to_json(), indent=2, default=str) + "\n")
    else:
        from rich.markup import escape

        _console(True).print(f"[bold red]gkit: error:[/] {escape(error.message)}")


def progress_bytes(description: str):
    """A rich progress bar over bytes on stderr (transient, so logs stay clean)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn(description),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(True),
        transient=True,
    )
