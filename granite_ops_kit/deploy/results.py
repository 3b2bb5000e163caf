"""What `gkit build` and `gkit deploy` did, as typed results. `to_json` is what `--json`
prints and what the audit record's details hold; its keys are flat, one object per run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _flat(part) -> dict:
    return part.to_json() if part is not None else {}


class _Fields:
    """`to_json` of a result that is its fields, as they are."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class RenderedChart(_Fields):
    """The files `render.write` left in the output folder (rendered is None without helm)."""

    chart: str
    values: str
    rendered: str | None
    plan_file: str


@dataclass(frozen=True, kw_only=True)
class PodmanPod(_Fields):
    play_file: str
    pod: str
    url: str
    healthy_after_s: float
    ready_after_s: float


@dataclass(frozen=True, kw_only=True)
class HelmRelease:
    release: str
    revision: int | None
    status: str | None


@dataclass(frozen=True, kw_only=True)
class KubeRelease(_Fields):
    nodes_with_gpus: list[str]
    release_status: HelmRelease


@dataclass(frozen=True, kw_only=True)
class DockerContainer(_Fields):
    container: str
    url: str
    healthy_after_s: float


Applied = PodmanPod | KubeRelease | DockerContainer


@dataclass(frozen=True, kw_only=True)
class PlanSummary:
    """The part of the capacity plan a deploy reports."""

    gpu: str
    context: int
    concurrency: int
    per_gpu_bytes: int
    budget_per_gpu: int


@dataclass(frozen=True, kw_only=True)
class DeployResult:
    """A deploy: what the gate found, the plan, and (as it got that far) the chart and
    what the target started."""

    action: str  # rendered or deployed
    target: str
    gpus: int
    release: str
    namespace: str
    manifest_digest: str | None
    verification: str
    verification_failure: str = ""
    signer: dict | None
    approval: str
    plan: PlanSummary
    chart: RenderedChart | None = None
    applied: Applied | None = None

    def to_json(self) -> dict:
        head = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("plan", "chart", "applied", "verification_failure")
        }
        if self.verification_failure:
            head["verification_failure"] = self.verification_failure
        return {
            **head,
            "plan": dataclasses.asdict(self.plan),
            **_flat(self.chart),
            **_flat(self.applied),
        }


@dataclass(frozen=True, kw_only=True)
class PodRemoved:
    """`gkit deploy --target podman --down`."""

    play_file: str
    target: str = "podman"
    action: str = "removed"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "removed": True}


@dataclass(frozen=True, kw_only=True)
class BuiltImage(_Fields):
    """`gkit build`: the image on the Docker engine and the model manifest it was gated on."""

    tag: str
    image_id: str
    labels: dict[str, str]
    base_image: str
    accelerator: str
    size_bytes: int | None
    user: str | None
    model_manifest_digest: str | None = None
