"""Where the shipped manifests are: the source tree's manifests/ or the installed copy."""

from __future__ import annotations

from pathlib import Path

CHART_NAME = "granite-runtime"


def manifests_dir() -> Path:
    source = Path(__file__).resolve().parents[2] / "manifests"
    if (source / "helm" / CHART_NAME / "Chart.yaml").exists():
        return source
    return Path(__file__).resolve().parents[1] / "manifests"


def chart_dir() -> Path:
    return manifests_dir() / "helm" / CHART_NAME
