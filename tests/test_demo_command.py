"""`gkit demo`: the whole main job on the embedded demo model, every step audited."""

import json

import yaml

from tests.conftest import run_gkit


def test_demo_runs_the_main_job_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = run_gkit("demo", "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    steps = {s["step"]: s for s in payload["steps"]}
    assert list(steps) == ["demo-model", "sign", "verify", "size", "deploy", "serve", "audit"]
    assert all(s["status"] == "done" for s in steps.values())
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "model" / "model.sig").is_file()
    assert steps["verify"]["manifest_digest"].startswith("sha256:")
    assert steps["size"]["fits"] is True and steps["size"]["gpus"] == 2
    values = yaml.safe_load((out / "deploy" / "values.yaml").read_text())
    assert values["gpus"] == 2
    assert values["model"]["manifestDigest"] == steps["verify"]["manifest_digest"]
    assert steps["serve"]["usage"]["completion_tokens"] >= 1
    assert isinstance(steps["serve"]["answer"], str)
    audit = steps["audit"]
    assert audit["verified"] is True and audit["records"] == 6
    html = (out / "audit-report.html").read_text()
    for event in (
        "artifact.signed",
        "artifact.verified",
        "deployment.rendered",
        "capacity.planned",
        "runtime.served",
    ):
        assert event in html
    assert (out / "audit-evidence.zip").stat().st_size > 1000
    # Running it again replaces its own artifacts rather than failing.
    again = run_gkit("demo", "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert "5. deploy (render, 2 GPUs)" in again.stdout and "7. audit" in again.stdout
