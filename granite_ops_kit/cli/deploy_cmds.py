"""`gkit build` and `gkit deploy`: thin wrappers over granite_ops_kit.deploy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from granite_ops_kit.cli import output
from granite_ops_kit.cli.options import (
    JSON_OPTION,
    POLICY_HELP,
    CertificateChain,
    DeployPolicy,
    Identity,
    Issuer,
    PublicKey,
    TrustConfig,
    trust_inputs,
)
from granite_ops_kit.cli.supply_cmds import hashing_progress, recorder
from granite_ops_kit.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from granite_ops_kit.deploy.results import DeployResult


def _log(message: str) -> None:
    if not output.state.json:
        from rich.markup import escape

        output.stderr.print(f"[dim]{escape(message)}[/]", highlight=False)


def _whole_gpus(value: str) -> int:
    """GPUs are whole: '2' is fine, '0.5' or 'two' is a usage error, never rounded."""
    if value is None:
        raise UsageError("--gpus is required: the whole GPUs each replica gets (1, 2, 4, 8).")
    if not re.fullmatch(r"[1-9][0-9]*", value.strip()):
        raise UsageError(
            f"--gpus must be a whole number of GPUs (1, 2, 4, 8), not '{value}'; "
            "a GPU cannot be shared by fractions here."
        )
    gpus = int(value)
    if gpus > 8:
        raise UsageError(f"--gpus {gpus}: one pod spans one host, 8 GPUs at most.")
    return gpus


def build(
    model_path: Path = typer.Argument(..., help="The model directory (verified with gkit verify)."),
    tag: str = typer.Option(None, help="Image tag; default gkit-runtime/NAME:VERSION."),
    accelerator: str = typer.Option(
        "cuda",
        help="cuda: the base image supplies torch and triton built for CUDA (checked at "
        "build time) and gkit's wheels never replace them; cpu: torch comes from the "
        "wheelhouse (tests, CPU-only hosts).",
    ),
    base_image: str = typer.Option(
        None,
        help="Base image with Python 3.11, already on the Docker engine (never pulled). "
        "Default: pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime for cuda, "
        "python:3.11-slim-bookworm for cpu. A torch the base holds is reused.",
    ),
    bake_model: bool = typer.Option(
        False, "--bake-model", help="Copy the model into the image (read-only, at /opt/gkit/model)."
    ),
    model_from: str = typer.Option(
        "pvc", help="Where a non-baked model comes from at run time: pvc or hf."
    ),
    wheelhouse: Path = typer.Option(
        None,
        help="Use these wheels instead of building them (air-gapped hosts prepare them elsewhere).",
    ),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified", help="Build even without a passing gkit verify (audited)."
    ),
    policy: str = typer.Option("default", help=POLICY_HELP),
    public_key: PublicKey = None,
    certificate_chain: CertificateChain = None,
    identity: Identity = None,
    issuer: Issuer = None,
    trust_config: TrustConfig = None,
    deploy_policy: DeployPolicy = None,
    json_: bool = JSON_OPTION,
) -> None:
    """Build a non-root container image of the runtime (and, with --bake-model, the model).

    The build needs no network: gkit and its dependencies are installed from wheels built
    on this host. The model's signature is checked again first, with the trust inputs
    given here or else the ones its last `gkit verify` recorded. The image's labels carry
    the model's manifest digest and verification. The image id is recorded in the audit log.
    """
    from granite_ops_kit.audit.records import current_actor
    from granite_ops_kit.deploy import pipeline

    output.use_json(json_)
    job = pipeline.ImageJob(
        model_path=model_path,
        tag=tag,
        accelerator=accelerator,
        base_image=base_image or "",
        bake_model=bake_model,
        model_from=model_from,
        wheelhouse=wheelhouse,
        allow_unverified=allow_unverified,
        policy=policy,
        trust=trust_inputs(public_key, certificate_chain, identity, issuer, trust_config),
        deploy_policy=deploy_policy,
    )
    with hashing_progress() as progress:
        result = pipeline.build_image(job, current_actor(), recorder(), progress, _log)

    def render(con: Console) -> None:
        con.print(
            f"[green]built[/] {result.tag} ({result.image_id[:19]}), user "
            f"{result.user}, model {result.model_manifest_digest or '(unsigned)'}"
        )

    output.emit(result.to_json(), render)


def deploy(
    model_path: Path = typer.Argument(..., help="The verified model directory."),
    gpus: str = typer.Option(
        None,
        help="Whole GPUs per replica: the nvidia.com/gpu request and the tensor-parallel "
        "size. Required but with --down.",
    ),
    target: str = typer.Option(
        "render",
        help="render (chart + values to --output), kubernetes (helm upgrade --install "
        "--wait), podman (podman kube play --network host on this host) or docker (this host).",
    ),
    output_dir: Path = typer.Option(
        Path("deploy-out"),
        "--output",
        help="Where the chart, values.yaml, rendered.yaml (and podman's play file) go.",
    ),
    down: bool = typer.Option(
        False, "--down", help="Remove the pod a --target podman deploy to --output started."
    ),
    namespace: str = typer.Option("default", help="Kubernetes namespace."),
    release: str = typer.Option(None, help="Helm release name; default from the model."),
    gpu: str = typer.Option("h100-80gb", help="GPU type the plan is made for (gkit size)."),
    context: int = typer.Option(8192, min=16, help="Tokens per session the plan must fit."),
    concurrency: int = typer.Option(8, min=1, help="Concurrent sessions the plan must fit."),
    image_ref: str = typer.Option(
        None, "--image", help="Image (from gkit build); default gkit-runtime/NAME:VERSION."
    ),
    device: str = typer.Option(
        "cuda", help="The runtime's device: cuda, or cpu (the GPU request is still rendered)."
    ),
    port: int = typer.Option(8000, min=1, max=65535, help="The runtime's port."),
    model_source: str = typer.Option("pvc", help="pvc, hf or baked."),
    model_loader: str = typer.Option(
        "", help="Fill a new model claim: hf (pulls --hf-repo at --hf-revision, verifies)."
    ),
    existing_claim: str = typer.Option("", help="PVC that already holds the model."),
    storage_class: str = typer.Option("", help="Storage class for a new model PVC."),
    hf_repo: str = typer.Option("", help="Hub repo (model-source hf, model-loader hf)."),
    hf_revision: str = typer.Option("", help="Pinned commit (model-source hf, model-loader hf)."),
    policy: str = typer.Option(
        "default",
        help="Policy the gate and the verify initContainer apply; one that pins signers "
        "refuses any other key, root or identity.",
    ),
    public_key: PublicKey = None,
    certificate_chain: CertificateChain = None,
    identity: Identity = None,
    issuer: Issuer = None,
    trust_config: TrustConfig = None,
    deploy_policy: DeployPolicy = None,
    verify_arg: list[str] = typer.Option(
        None,
        help="Trust input for the verify step, e.g. "
        "--verify-arg=--public-key --verify-arg=/etc/gkit/"
        "trust/signer.pub. Repeatable.",
    ),
    trust_config_map: str = typer.Option("", help="ConfigMap mounted at /etc/gkit/trust."),
    kube_context: str = typer.Option(None, help="kubeconfig context (target kubernetes)."),
    allow_unverified: bool = typer.Option(
        False,
        "--allow-unverified",
        help="Deploy without a passing gkit verify of this manifest (audited).",
    ),
    json_: bool = JSON_OPTION,
) -> None:
    """Deploy a verified model sized by gkit size: a Helm chart, a Kubernetes release, a pod
    on this host (podman) or a container on this host (docker).

    The gate first checks the model's signature again as it is now, with the trust inputs
    given here or else the ones its last `gkit verify` recorded, under --policy. It refuses
    a model that fails, one whose exact manifest has no passing `gkit verify` in the audit
    log, a fractional --gpus (exit 2) and a plan that does not fit (exit 1). Every deploy is
    an audit record, with the outcome it observed.

    Examples:

      gkit deploy ./h-micro --gpus 2 --target render --output out/

      gkit deploy ./h-micro --gpus 2 --target kubernetes --namespace llm --gpu h100-80gb

      gkit deploy ./h-micro --gpus 1 --target podman --device cpu --output out/ --port 8080

      gkit deploy ./h-micro --target podman --output out/ --down
    """
    from granite_ops_kit.audit.records import current_actor
    from granite_ops_kit.deploy import pipeline

    output.use_json(json_)
    if down:
        return _take_down(model_path, target, output_dir)
    req = pipeline.DeployRequest(
        model_path=model_path,
        gpus=_whole_gpus(gpus),
        target=target,
        output_dir=output_dir,
        namespace=namespace,
        release=release,
        gpu=gpu,
        context=context,
        concurrency=concurrency,
        image=image_ref,
        device=device,
        port=port,
        model_source=model_source,
        model_loader=model_loader,
        existing_claim=existing_claim,
        storage_class=storage_class,
        hf_repo=hf_repo,
        hf_revision=hf_revision,
        policy=policy,
        verify_args=list(verify_arg or []),
        trust_config_map=trust_config_map,
        kube_context=kube_context,
        allow_unverified=allow_unverified,
        deploy_policy=deploy_policy,
        trust=trust_inputs(public_key, certificate_chain, identity, issuer, trust_config),
    )
    with hashing_progress() as progress:
        result = pipeline.deploy(req, current_actor(), recorder(), progress, _log)
    output.emit(result.to_json(), _render_deployed(result))


def _take_down(model_path: Path, target: str, output_dir: Path) -> None:
    from granite_ops_kit.deploy import pipeline

    req = pipeline.DeployRequest(
        model_path=model_path, gpus=0, target=target, output_dir=output_dir
    )
    removed = pipeline.take_down(req, recorder())

    def render(con: Console) -> None:
        con.print(f"[green]removed[/] (podman) the pod of {removed.play_file}")

    output.emit(removed.to_json(), render)


def _render_deployed(result: DeployResult):
    def render(con: Console) -> None:
        plan = result.plan
        con.print(
            f"[green]{result.action}[/] ({result.target}) {result.release}: "
            f"{result.gpus} x {plan.gpu}, {plan.concurrency} sessions x "
            f"{plan.context:,} tokens; {result.verification}"
        )
        shown = result.to_json()
        for key in ("chart", "values", "rendered", "release_status", "pod", "container", "url"):
            if shown.get(key):
                con.print(f"  {key:<15} {shown[key]}")

    return render
