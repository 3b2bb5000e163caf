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
