"""Options shared by many commands."""

import typer

JSON_OPTION = typer.Option(
    False, "--json", help="Print one machine-readable JSON object on stdout, also on failure."
)
