"""The `gkit` entry point: the typer app, global options, and error-to-exit-code mapping.

Keep this module's imports light: `gkit --help` must not import torch, docker, kubernetes or
sigstore. Commands import what they need inside their function bodies.
"""

from __future__ import annotations

import sys

import typer

from granite_ops_kit import __version__
from granite_ops_kit.cli import (
    audit_cmd,
    demo,
    deploy_cmds,
    output,
    runtime_cmds,
    size_cmd,
    supply_cmds,
)
from granite_ops_kit.errors import EXIT_USAGE, CheckFailed, GkitError, UsageError

app = typer.Typer(
    name="gkit",
    help="granite-ops-kit: take IBM Granite 4.0 models from a registry to a verified, sized, "
    "audited GPU service.\n\n"
    "Typical pipeline: gkit pull -> gkit verify -> gkit size -> gkit build -> "
    "gkit deploy --gpus 2. Every step appends a record to a tamper-evident audit log.\n\n"
    "Exit codes: 0 success, 1 the check failed, 2 usage error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gkit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    json_: bool = typer.Option(
        False, "--json", help="Machine-readable JSON on stdout for any command, also on failure."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    output.use_json(json_)


# Order here is the order in `gkit --help`: the pipeline, then the tools around it.
app.command("pull")(supply_cmds.pull)
app.command("verify")(supply_cmds.verify)
app.command("sign")(supply_cmds.sign)
app.command("approve")(audit_cmd.approve)
app.add_typer(audit_cmd.app, name="audit")
app.command("size")(size_cmd.size)
app.command("generate")(runtime_cmds.generate)
app.command("serve")(runtime_cmds.serve)
app.command("build")(deploy_cmds.build)
app.command("deploy")(deploy_cmds.deploy)
app.command("demo-model")(demo.demo_model)
app.command("demo")(demo.demo)


def _usage_error(error: typer.TyperException) -> int:
    """A parse error from typer (its vendored click): one sentence, exit 2."""
    format_message = getattr(error, "format_message", None)
    message = format_message() if format_message else str(error)
    ctx = getattr(error, "ctx", None)
    if ctx is not None:
        message = f"{message} (see '{ctx.command_path} --help')"
    output.report_error(UsageError(message))
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Run gkit; returns (and, as a console script, exits with) the exit code."""
    args = sys.argv[1:] if argv is None else argv
    output.state.json = "--json" in args  # so even a parse error answers in JSON
    try:
        result = app(args=args, prog_name="gkit", standalone_mode=False)
    except GkitError as error:
        output.report_error(error)
        return error.exit_code
    except typer.TyperException as error:
        return _usage_error(error)
    except PermissionError as error:  # a file gkit must read or write, named
        output.report_error(CheckFailed(f"{error.filename}: permission denied."))
        return CheckFailed.exit_code
    except (typer.Abort, KeyboardInterrupt):
        output.stderr.print("gkit: interrupted")
        return 130
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
