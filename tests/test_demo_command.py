"""`gkit demo`: today it writes the demo model and names the steps still to come."""

import json

from tests.conftest import run_gkit


def test_demo_writes_the_model_and_lists_later_steps(tmp_path):
    result = run_gkit("demo", "--output", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    steps = {s["step"]: s for s in payload["steps"]}
    assert steps["demo-model"]["status"] == "done"
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    assert steps["serve"]["status"] == "done"
    assert steps["serve"]["usage"]["completion_tokens"] >= 1
    assert isinstance(steps["serve"]["answer"], str)
    assert steps["size"]["fits"] is True and steps["size"]["gpus"] == 2
    assert {"sign", "verify", "deploy"} <= set(steps)
    audit = steps["audit"]
    assert audit["verified"] is True and audit["records"] >= 3
    assert (tmp_path / "out" / "audit-report.html").read_text().count('<tr id="r') >= 3
    assert (tmp_path / "out" / "audit-evidence.zip").stat().st_size > 1000
    # Running it again replaces its own model rather than failing.
    again = run_gkit("demo", "--output", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr
    assert "demo model" in again.stdout and "answered one chat request" in again.stdout
