"""`gkit deploy` as a function: gate (verified, approved) -> plan (gkit size) -> chart values
-> target (render, kubernetes, docker) -> audit record. The CLI and `gkit demo` call it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from granite_ops_kit import __version__
from granite_ops_kit.audit import events
from granite_ops_kit.deploy import results
from granite_ops_kit.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from granite_ops_kit.supply.trust import TrustInputs

TARGETS = ("render", "kubernetes", "docker", "podman")
RELEASE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$")


@dataclass(kw_only=True)
class DeployRequest:
    model_path: Path
    gpus: int
    target: str = "render"
    output_dir: Path = Path("deploy-out")
    namespace: str = "default"
    release: str | None = None
    gpu: str = "h100-80gb"
    context: int = 8192
    concurrency: int = 8
    image: str | None = None
    model_source: str = "pvc"
    model_loader: str = ""  # a new claim: "" or hf (an initContainer pulls into it)
    existing_claim: str = ""
    storage_class: str = ""
    hf_repo: str = ""
    hf_revision: str = ""
    policy: str = "default"
    verify_args: list[str] = field(default_factory=list)
    trust_config_map: str = ""
    kube_context: str | None = None
    allow_unverified: bool = False
    trust: TrustInputs | None = None  # else the last recorded verification's
    deploy_policy: Path | None = None  # else the shipped policies/deploy.json
    device: str = "cuda"  # the runtime's --device (cpu serves without a GPU)
    port: int = 8000  # the runtime's port (on the host for podman and docker)


def slug(model_path: Path) -> str:
    name = model_path.resolve().name.lower()
    return re.sub(r"[^a-z0-9._-]+", "-", name).strip("-.") or "model"


def default_image(model_path: Path) -> str:
    return f"gkit-runtime/{slug(model_path)}:{__version__}"


def verification_label(checked) -> str:
    if checked.verified_record is not None:
        return (
            f"verified (audit record {checked.verified_record}), signature checked again "
            f"with {checked.trust_source}"
        )
    if checked.manifest_digest:
        return "signature verified now, but no gkit verify recorded (--allow-unverified)"
    return "unverified (--allow-unverified)"


def _check(req: DeployRequest) -> str:
    if req.target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, not '{req.target}'.")
    if req.model_source not in ("pvc", "hf", "baked"):
        raise UsageError(f"--model-source must be pvc, hf or baked, not '{req.model_source}'.")
    if req.device not in ("cuda", "cpu"):
        raise UsageError(f"--device must be cuda or cpu, not '{req.device}'.")
    if req.model_loader not in ("", "hf"):
        raise UsageError(f"--model-loader must be hf (or empty), not '{req.model_loader}'.")
    if req.model_loader and (req.model_source != "pvc" or req.existing_claim):
        raise UsageError(
            "--model-loader fills a new claim: use it with --model-source pvc "
            "and no --existing-claim."
        )
    release = req.release or slug(req.model_path)[:53].strip("-.")
    if not RELEASE.match(release):
        raise UsageError(f"release name '{release}' is not a DNS label (a-z, 0-9, '-').")
    return release


def plan_for(req: DeployRequest):
    from granite_ops_kit.sizing import engines
    from granite_ops_kit.sizing.gpus import find_gpu
    from granite_ops_kit.sizing.plan import Request, make_plan, require_fit
    from granite_ops_kit.sizing.source import resolve

    workload = engines.Workload(req.context, req.concurrency, "bf16", "bf16", "bf16", 0.9)
    shape = resolve(str(req.model_path))
    return require_fit(make_plan(Request(shape, find_gpu(req.gpu), req.gpus, "gkit", workload)))


def _pod_trust(req: DeployRequest, checked) -> tuple[dict[str, str], list[str]]:
    """What the pod verifies with: explicit --verify-arg flags (with the user's own
    ConfigMap), else the trust inputs the gate just verified the model with."""
    from granite_ops_kit.deploy.trust_files import for_pod

    if req.verify_args or req.trust_config_map or not checked.trust:
        return {}, list(req.verify_args)
    return for_pod(checked.trust)


def _chart_values(req: DeployRequest, plan, checked, repo: str, tag: str) -> dict:
    from granite_ops_kit.deploy import values

    trust_files, verify_args = _pod_trust(req, checked)
    return values.build(
        values.ChartInputs(
            name=slug(req.model_path),
            gpus=req.gpus,
            plan=plan,
            image_repository=repo,
            image_tag=tag,
            manifest_digest=checked.manifest_digest or "",
            source=values.ModelSource(
                req.model_source,
                req.existing_claim,
                req.storage_class,
                req.hf_repo,
                req.hf_revision,
                loader=req.model_loader,
            ),
            policy=req.policy,
            verify_args=verify_args,
            trust_config_map=req.trust_config_map,
            trust_files=trust_files,
            device=req.device,
            port=req.port,
        )
    )


def deploy(
    req: DeployRequest, actor: str, recorder: events.Recorder, progress=None, log=None
) -> results.DeployResult:
    """Gate, plan, render and (per target) apply; deployment.rendered or .applied is
    recorded with the outcome observed, a failure included."""
    release = _check(req)
    recorder.ensure_recordable()  # never an applied deployment without its record
    checked = _gated(req, actor, recorder, progress)
    plan = plan_for(req)
    repo, _, tag = (req.image or default_image(req.model_path)).rpartition(":")
    chart_values = _chart_values(req, plan, checked, repo, tag)
    # A render deploys nothing: it is recorded (and printed) as what it is. An applied
    # deployment is recorded with the outcome observed, a failure included.
    result = results.DeployResult(
        action="rendered" if req.target == "render" else "deployed",
        target=req.target,
        gpus=req.gpus,
        release=release,
        namespace=req.namespace,
        manifest_digest=checked.manifest_digest,
        verification=verification_label(checked),
        verification_failure=checked.failure,
        signer=checked.signer,
        approval=checked.approval,
        plan=results.PlanSummary(
            gpu=req.gpu,
            context=req.context,
            concurrency=req.concurrency,
            per_gpu_bytes=plan.per_gpu.total,
            budget_per_gpu=plan.budget_per_gpu,
        ),
    )
    event = "deployment.rendered" if req.target == "render" else "deployment.applied"
    where = f"{req.target}: {release} on {req.gpus} GPU(s)"
    failure = None
    try:
        chart, applied = _apply(req, release, chart_values, plan, f"{repo}:{tag}", log)
        result = dataclasses.replace(result, chart=chart, applied=applied)
    except CheckFailed as error:
        failure = error
    recorder.record(
        events.deployment(
            event, req.model_path, where, result.to_json(), result.manifest_digest, failure
        )
    )
    if failure:
        raise failure
    return result


def take_down(req: DeployRequest, recorder: events.Recorder) -> results.PodRemoved:
    """`gkit deploy --target podman --down`: remove what a podman deploy started."""
    from granite_ops_kit.deploy import podman

    if req.target != "podman":
        raise UsageError(
            "--down removes a --target podman deployment; use helm uninstall "
            "(kubernetes) or docker rm (docker) for the others."
        )
    recorder.ensure_recordable()
    removed = podman.down(req.output_dir)
    recorder.record(events.deployment_removed(req.model_path, removed.to_json()))
    return removed


def _gated(req: DeployRequest | ImageJob, actor: str, recorder: events.Recorder, progress):
    """The gate for a deploy or a build: verified again now, with a recorded passing
    verification of this manifest in the recorder's store, and approved."""
    from granite_ops_kit.deploy import gate

    return gate.check(
        req.model_path,
        req.allow_unverified,
        actor,
        trust=req.trust,
        policy=req.policy,
        progress=progress,
        deploy_policy=req.deploy_policy,
        audit_url=recorder.url,
    )


def _apply(
    req: DeployRequest, release, chart_values, plan, image: str, log
) -> tuple[results.RenderedChart | None, results.Applied | None]:
    """Render the chart (docker runs the image without one) and, but for render, start it."""
    from granite_ops_kit.deploy import render

    if req.target == "docker":
        return None, _run_container(req, release, chart_values, image)
    if req.target == "kubernetes":
        from granite_ops_kit.deploy import kube

        nodes = kube.preflight(req.gpus, req.namespace, req.storage_class or None, req.kube_context)
    chart = render.write(req.output_dir, chart_values, plan, release, req.namespace)
    if req.target == "kubernetes":
        status = kube.install(
            release, Path(chart.chart), Path(chart.values), req.namespace, req.kube_context
        )
        return chart, results.KubeRelease(nodes_with_gpus=nodes, release_status=status)
    if req.target == "podman":
        from granite_ops_kit.deploy import podman

        if not chart.rendered:
            raise CheckFailed("helm is needed to render the Deployment podman plays.")
        rendered = Path(chart.rendered).read_text()
        pod = podman.play(
            req.output_dir, rendered, req.model_path, image, req.port, log or (lambda m: None)
        )
        return chart, pod
    return chart, None


def _run_container(req: DeployRequest, release, chart_values, image: str):
    from granite_ops_kit.deploy import docker_run

    container = docker_run.run(
        docker_run.RunRequest(
            image,
            req.model_path,
            req.gpus,
            name=release,
            env={"GKIT_EXPECT_DIGEST": chart_values["model"]["manifestDigest"]},
            port=req.port,
        )
    )
    seconds = docker_run.wait_healthy(container, req.port)
    return results.DockerContainer(
        container=container.name,
        url=f"http://127.0.0.1:{req.port}/v1",
        healthy_after_s=round(seconds, 1),
    )


@dataclass(kw_only=True)
class ImageJob:
    """`gkit build`: the model, how to package it, and what the gate checks it against."""

    model_path: Path
    tag: str | None = None  # default gkit-runtime/NAME:VERSION
    accelerator: str = "cuda"
    base_image: str = ""
    bake_model: bool = False
    model_from: str = "pvc"
    wheelhouse: Path | None = None
    allow_unverified: bool = False
    policy: str = "default"
    trust: TrustInputs | None = None
    deploy_policy: Path | None = None


def build_image(
    job: ImageJob, actor: str, recorder: events.Recorder, progress=None, log=None
) -> results.BuiltImage:
    """Gate the model again, build the image, record image.built; returns the build."""
    from granite_ops_kit.deploy import image

    if job.accelerator not in image.ACCELERATORS:
        raise UsageError(f"--accelerator must be cuda or cpu, not '{job.accelerator}'.")
    if job.model_from not in ("pvc", "hf"):
        raise UsageError(f"--model-from must be pvc or hf, not '{job.model_from}'.")
    recorder.ensure_recordable()  # never an image built without its record
    checked = _gated(job, actor, recorder, progress)
    req = image.BuildRequest(
        model_path=job.model_path,
        tag=job.tag or default_image(job.model_path),
        accelerator=job.accelerator,
        base_image=job.base_image,
        bake_model=job.bake_model,
        model_from=job.model_from,
        manifest_digest=checked.manifest_digest or "",
        verification=verification_label(checked),
        wheelhouse=job.wheelhouse,
    )
    built = image.build(req, log)
    recorder.record(events.image_built(built, req))
    return built
