"""`python -m granite_ops_kit` is `gkit`."""

from granite_ops_kit.cli.app import run

run()
