"""`--target render`: the chart, its values and (with helm) the rendered manifests, written
to a staging directory first and moved into place, so a failure leaves nothing half-done."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from granite_ops_kit.deploy import assets, helm

OWNED = ("chart", "values.yaml", "rendered.yaml", "plan.json")


def write(output: Path, values: dict, plan: dict, release: str, namespace: str) -> dict:
    import yaml

    output.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".render-", dir=output))
    try:
        shutil.copytree(assets.chart_dir(), stage / "chart")
        (stage / "values.yaml").write_text(
            "# Written by gkit deploy --target render: the plan from gkit size, the verified\n"
            "# manifest and the image. helm upgrade --install RELEASE chart -f values.yaml\n"
            + yaml.safe_dump(values, sort_keys=False)
        )
        (stage / "plan.json").write_text(json.dumps(plan, indent=2, default=str) + "\n")
        rendered = None
        if helm.find_helm():
            helm.helm("lint", str(stage / "chart"), "-f", str(stage / "values.yaml"))
            out = helm.helm(
                "template",
                release,
                str(stage / "chart"),
                "-f",
                str(stage / "values.yaml"),
                "--namespace",
                namespace,
            )
            (stage / "rendered.yaml").write_text(out.stdout)
            rendered = str(output / "rendered.yaml")
        for name in OWNED:
            target = output / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if (stage / name).exists():
                (stage / name).rename(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "chart": str(output / "chart"),
        "values": str(output / "values.yaml"),
        "rendered": rendered,
        "plan": str(output / "plan.json"),
    }
