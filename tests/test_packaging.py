"""The distribution's shape: control plane without torch, extras, console script."""

from importlib.metadata import distribution

from packaging.requirements import Requirement


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in distribution("granite-ops-kit").requires or []]


def test_control_plane_installs_without_torch():
    base = [r.name.lower() for r in _requirements() if r.marker is None]
    assert "torch" not in base and "transformers" not in base
    assert {"typer", "rich", "jinja2", "safetensors", "tokenizers"} <= set(base)


def test_extras_carry_runtime_and_test_tools():
    by_extra: dict[str, set[str]] = {}
    for req in _requirements():
        if req.marker is None:
            continue
        for extra in ("runtime", "dev"):
            if req.marker.evaluate({"extra": extra}):
                by_extra.setdefault(extra, set()).add(req.name.lower())
    assert {"torch", "safetensors", "tokenizers", "fastapi", "uvicorn"} <= by_extra["runtime"]
    assert {"pytest", "transformers", "model-signing", "openai", "ruff"} <= by_extra["dev"]


def test_console_script_and_both_packages():
    dist = distribution("granite-ops-kit")
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {
        "gkit": "granite_ops_kit.cli.app:run",
        "gkit-probe": "granite_ops_kit.cli.probe:main",
    }
    import granite_ops_kit
    import granite_runtime

    assert granite_runtime.__file__.endswith("runtime/granite_runtime/__init__.py")
    assert granite_ops_kit.__version__ == granite_runtime.__version__


def test_wheel_carries_every_module_and_shipped_file(tmp_path):
    """The wheel `gkit build` installs in images: code, policies, manifests, catalog."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    from granite_ops_kit.deploy.wheelhouse import _copy_source

    repo = Path(__file__).resolve().parents[1]
    src = _copy_source(repo, tmp_path / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "w"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    names = set(zipfile.ZipFile(next((tmp_path / "w").glob("*.whl"))).namelist())
    expected = {
        *(
            f"granite_ops_kit/{p.relative_to(repo / 'granite_ops_kit')}"
            for p in (repo / "granite_ops_kit").rglob("*.py")
        ),
        *(
            f"granite_runtime/{p.relative_to(repo / 'runtime' / 'granite_runtime')}"
            for p in (repo / "runtime" / "granite_runtime").rglob("*.py")
        ),
        "granite_runtime/kernels/cpu/csrc/cpu_decode.c",
        *(f"granite_ops_kit/policies/{p.name}" for p in (repo / "policies").iterdir()),
        *(
            f"granite_ops_kit/manifests/{p.relative_to(repo / 'manifests')}"
            for p in (repo / "manifests").rglob("*")
            if p.is_file()
        ),
    }
    assert expected - names == set()
