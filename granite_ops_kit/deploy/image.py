"""`gkit build`: render the Dockerfile, assemble a context (wheels, entrypoint, maybe the
model), build it through the Docker engine's API, and report the image's id and labels."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from granite_ops_kit import __version__
from granite_ops_kit.deploy import assets, wheelhouse
from granite_ops_kit.deploy.results import BuiltImage
from granite_ops_kit.errors import CheckFailed, UsageError

ACCELERATORS = ("cuda", "cpu")
# cpu: torch comes from the wheelhouse. cuda: the base supplies torch and triton built for
# CUDA (a PyTorch CUDA runtime image, Python 3.11), and the wheelhouse leaves them out.
DEFAULT_BASE = {
    "cpu": "python:3.11-slim-bookworm",
    "cuda": "pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime",
}
# What the build's torch check exits with (the Dockerfile's RUN), and what it means.
NO_TORCH, NO_CUDA = 85, 86
MODEL_IN_IMAGE = "/opt/gkit/model"
MODEL_MOUNTED = "/models/model"


@dataclass(kw_only=True)
class BuildRequest:
    model_path: Path
    tag: str
    accelerator: str = "cuda"
    base_image: str = ""  # "" is DEFAULT_BASE[accelerator]
    bake_model: bool = False
    model_from: str = "pvc"  # pvc | hf | baked (bake_model)
    manifest_digest: str = ""
    verification: str = "unverified"
    wheelhouse: Path | None = None


def render_dockerfile(req: BuildRequest) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(assets.manifests_dir()),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template("Dockerfile.j2").render(
        base_image=base_of(req),
        accelerator=req.accelerator,
        no_torch=NO_TORCH,
        no_cuda=NO_CUDA,
        version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        model_name=req.model_path.resolve().name,
        model_from="baked" if req.bake_model else req.model_from,
        model_path=MODEL_IN_IMAGE if req.bake_model else MODEL_MOUNTED,
        manifest_digest=req.manifest_digest,
        verification=req.verification,
        bake=req.bake_model,
    )


def base_of(req: BuildRequest) -> str:
    return req.base_image or DEFAULT_BASE[req.accelerator]


def _build_failure(error: str, req: BuildRequest) -> CheckFailed:
    """The torch check's exit codes as sentences; anything else as docker says it."""
    base = base_of(req)
    if f"non-zero code: {NO_TORCH}" in error:
        return CheckFailed(
            f"the base image {base} has no torch: a cuda image reuses the base's torch and "
            "triton (use a PyTorch CUDA runtime image, or --accelerator cpu)."
        )
    if f"non-zero code: {NO_CUDA}" in error:
        return CheckFailed(
            f"the torch in base image {base} has no CUDA support (torch.version.cuda is "
            "not set): use a PyTorch CUDA runtime image, or --accelerator cpu."
        )
    return CheckFailed(f"docker build failed: {error}")


def docker_client():
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as e:
        raise CheckFailed(
            f"no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): "
            f"{str(e).splitlines()[0][:160]}"
        ) from None
    return client


def _context(req: BuildRequest, ctx: Path, log) -> None:
    (ctx / "Dockerfile").write_text(render_dockerfile(req))
    shutil.copy2(assets.manifests_dir() / "gkit-start", ctx / "gkit-start")
    (ctx / "gkit-start").chmod(0o755)
    wheels = ctx / "wheels"
    if req.wheelhouse:
        shutil.copytree(req.wheelhouse, wheels)
    else:
        wheelhouse.build(wheels, log)
    if req.accelerator == "cuda":
        wheelhouse.drop_base_supplied(wheels, log)  # the base's CUDA torch stays
    if req.bake_model:
        shutil.copytree(req.model_path, ctx / "model", symlinks=False)


def build(req: BuildRequest, log=print) -> BuiltImage:
    if not req.model_path.is_dir():
        raise UsageError(f"{req.model_path} is not a model directory.")
    if req.accelerator not in ACCELERATORS:
        raise UsageError(f"--accelerator must be cuda or cpu, not '{req.accelerator}'.")
    base = base_of(req)
    client = docker_client()
    try:
        client.images.get(base)
    except Exception:  # docker.errors.ImageNotFound; no registry is asked (no pull)
        raise UsageError(
            f"base image {base} is not on this Docker engine; load or "
            "pull it first (gkit build never pulls)."
        ) from None
    with tempfile.TemporaryDirectory(prefix="gkit-build-") as tmp:
        ctx = Path(tmp)
        _context(req, ctx, log)
        log(f"building {req.tag} ({req.accelerator}) from {base}")
        image_id = None
        for chunk in client.api.build(
            path=str(ctx),
            tag=req.tag,
            rm=True,
            forcerm=True,
            network_mode="none",
            pull=False,
            decode=True,
        ):
            if "stream" in chunk and chunk["stream"].strip().startswith("Step "):
                log(chunk["stream"].strip())
            if "error" in chunk:
                raise _build_failure(chunk["error"].strip(), req)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    image = client.images.get(image_id or req.tag)
    return BuiltImage(
        tag=req.tag,
        image_id=image.id,
        labels=image.labels,
        base_image=base,
        accelerator=req.accelerator,
        size_bytes=image.attrs.get("Size"),
        user=image.attrs["Config"].get("User"),
        model_manifest_digest=req.manifest_digest or None,
    )
