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
from granite_ops_kit.errors import CheckFailed, UsageError

DEFAULT_BASE = "python:3.11-slim-bookworm"
MODEL_IN_IMAGE = "/opt/gkit/model"
MODEL_MOUNTED = "/models/model"


@dataclass
class BuildRequest:
    model_path: Path
    tag: str
    base_image: str = DEFAULT_BASE
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
        base_image=req.base_image,
        version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        model_name=req.model_path.resolve().name,
        model_from="baked" if req.bake_model else req.model_from,
        model_path=MODEL_IN_IMAGE if req.bake_model else MODEL_MOUNTED,
        manifest_digest=req.manifest_digest,
        verification=req.verification,
        bake=req.bake_model,
    )


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
    if req.bake_model:
        shutil.copytree(req.model_path, ctx / "model", symlinks=False)


def build(req: BuildRequest, log=print) -> dict:
    if not req.model_path.is_dir():
        raise UsageError(f"{req.model_path} is not a model directory.")
    client = docker_client()
    try:
        client.images.get(req.base_image)
    except Exception:  # docker.errors.ImageNotFound; no registry is asked (no pull)
        raise UsageError(
            f"base image {req.base_image} is not on this Docker engine; load or "
            "pull it first (gkit build never pulls)."
        ) from None
    with tempfile.TemporaryDirectory(prefix="gkit-build-") as tmp:
        ctx = Path(tmp)
        _context(req, ctx, log)
        log(f"building {req.tag} from {req.base_image}")
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
                raise CheckFailed(f"docker build failed: {chunk['error'].strip()}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    image = client.images.get(image_id or req.tag)
    return {
        "tag": req.tag,
        "image_id": image.id,
        "labels": image.labels,
        "base_image": req.base_image,
        "size_bytes": image.attrs.get("Size"),
        "user": image.attrs["Config"].get("User"),
    }
