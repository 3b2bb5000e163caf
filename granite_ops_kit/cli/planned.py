"""Command groups that are designed but not built yet.

They are listed in `gkit --help` so the shape of the tool is visible from day one; calling
one says what it will do and exits 2 (a usage error: nothing ran).
"""

from __future__ import annotations

import typer

from granite_ops_kit import __version__
from granite_ops_kit.errors import NotBuiltYet

PLANNED: dict[str, str] = {
    "verify": "Check a model's OpenSSF Model Signing signature and policy.",
    "sign": "Sign a model directory (OpenSSF Model Signing, key or certificate).",
    "pull": "Download a model from the Hugging Face Hub at a pinned commit, then verify it.",
    "build": "Build a non-root container image of the runtime and the model.",
    "deploy": "Deploy a verified model: Helm chart, Kubernetes or Docker, sized for N GPUs.",
}


def _planned_command(name: str, summary: str):
    def command(ctx: typer.Context) -> None:
        raise NotBuiltYet(
            f"'gkit {name}' is not built yet in gkit {__version__}; it will: {summary[0].lower()}"
            f"{summary[1:]}"
        )

    command.__doc__ = f"[not built yet] {summary}"
    return command


def register(app: typer.Typer, names: list[str]) -> None:
    for name in names:
        app.command(
            name,
            context_settings={
                "allow_extra_args": True,
                "ignore_unknown_options": True,
                "help_option_names": [],
            },
            add_help_option=False,
        )(_planned_command(name, PLANNED[name]))
