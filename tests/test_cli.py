"""The command line's contract: help, version, exit codes, JSON errors, import cost."""

from __future__ import annotations

import json
import subprocess
import sys

from granite_ops_kit import __version__
from tests.conftest import run_gkit

GROUPS = [
    "verify",
    "sign",
    "pull",
    "approve",
    "audit",
    "size",
    "generate",
    "serve",
    "build",
    "deploy",
    "demo-model",
    "demo",
]


def test_help_lists_every_command_group():
    result = run_gkit("--help")
    assert result.returncode == 0
    commands = result.stdout.split("Commands:")[1]
    listed = [line.split()[0] for line in commands.splitlines() if line.strip()]
    assert sorted(listed) == sorted(GROUPS)
    assert len(listed) == len(GROUPS)


def test_version():
    result = run_gkit("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gkit {__version__}"


def test_every_command_has_help_that_teaches():
    for group in GROUPS:
        result = run_gkit(group, "--help")
        assert result.returncode == 0, group
        assert "Usage: gkit" in result.stdout and len(result.stdout.splitlines()) > 5, group


def test_json_error_shape_on_stdout():
    result = run_gkit("--json", "deploy", "m", "--gpus", "0.5")
    assert result.returncode == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert payload["error"]["kind"] == "usage"
    assert "whole number of GPUs" in payload["error"]["message"]
    assert payload["error"]["exit_code"] == 2


def test_unknown_flag_is_a_usage_error_in_one_sentence():
    result = run_gkit("demo-model", "x", "--no-such-flag")
    assert result.returncode == 2
    assert "No such option: --no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_flag_with_json_answers_in_json():
    result = run_gkit("demo-model", "x", "--bogus", "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"]["kind"] == "usage"


def test_help_imports_no_heavy_library():
    probe = (
        "import sys\n"
        "from granite_ops_kit.cli.app import main\n"
        "code = main(['--help'])\n"
        "heavy = [m for m in ('torch', 'docker', 'kubernetes', 'sigstore', 'numpy',"
        " 'transformers') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="
    # The probe is able to see an import: the same check after importing torch finds it.
    positive = subprocess.run(
        [sys.executable, "-c", "import sys, torch; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert positive.stdout.strip() == "True"


def test_demo_model_help_teaches_presets():
    result = run_gkit("demo-model", "--help")
    assert result.returncode == 0
    for word in ("tiny-hybrid", "tiny-dense", "--seed", "--max-shard-size"):
        assert word in result.stdout
