"""`--target render`: the chart, its values and (with helm) the rendered manifests, written
to a staging directory first and moved into place, so a failure leaves nothing half-done."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from granite_ops_kit.sizing.plan import Plan

from granite_ops_kit.deploy import assets, helm
from granite_ops_kit.deploy.results import RenderedChart

OWNED = ("chart", "values.yaml", "rendered.yaml", "plan.json")


def _merged(defaults: dict, planned: dict) -> dict:
    out = dict(defaults)
    for key, value in planned.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _plan_into_chart(chart: Path, values: dict) -> None:
    """The chart's own values.yaml becomes the plan, so `helm install r chart` without
    `-f values.yaml` deploys what gkit planned; the annotated defaults stay beside it."""
    import yaml

    defaults_file = chart / "values.yaml"
    defaults = yaml.safe_load(defaults_file.read_text()) or {}
    shutil.copy2(defaults_file, chart / "values.defaults.yaml")
    defaults_file.write_text(
        "# The plan gkit deploy made (gkit size): GPUs, limits, the verified manifest, the\n"
        "# trust inputs. values.defaults.yaml beside this file documents every key.\n"
        + yaml.safe_dump(_merged(defaults, values), sort_keys=False)
    )


def write(output: Path, values: dict, plan: Plan, release: str, namespace: str) -> RenderedChart:
    import yaml

    output.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".render-", dir=output))
    try:
        shutil.copytree(assets.chart_dir(), stage / "chart")
        _plan_into_chart(stage / "chart", values)
        (stage / "values.yaml").write_text(
            "# Written by gkit deploy --target render: the plan from gkit size, the verified\n"
            "# manifest and the image. helm upgrade --install RELEASE chart -f values.yaml\n"
            + yaml.safe_dump(values, sort_keys=False)
        )
        (stage / "plan.json").write_text(json.dumps(plan.to_json(), indent=2, default=str) + "\n")
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
    return RenderedChart(
        chart=str(output / "chart"),
        values=str(output / "values.yaml"),
        rendered=rendered,
        plan_file=str(output / "plan.json"),
    )
