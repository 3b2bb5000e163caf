"""Chart values from what gkit knows: the plan from `gkit size`, the verified manifest, the
image. The chart's own defaults cover the rest; values.schema.json checks the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from granite_ops_kit.sizing.plan import Plan

GIB = 1 << 30


@dataclass
class ModelSource:
    kind: str = "pvc"  # pvc | hf | baked
    existing_claim: str = ""
    storage_class: str = ""
    hf_repo: str = ""
    hf_revision: str = ""
    hf_token_secret: str = ""
    loader: str = ""  # a new claim: "" (copied in by hand) or hf (pulled by an initContainer)


@dataclass
class ChartInputs:
    name: str
    gpus: int
    plan: Plan
    image_repository: str
    image_tag: str
    image_digest: str = ""
    manifest_digest: str = ""
    source: ModelSource = field(default_factory=ModelSource)
    policy: str = "default"
    verify_args: list[str] = field(default_factory=list)
    trust_config_map: str = ""
    trust_files: dict[str, str] = field(default_factory=dict)
    dtype: str = "bfloat16"
    device: str = "cuda"
    port: int = 8000


def _gib(n: float) -> str:
    return f"{max(1, int(-(-n // GIB)))}Gi"


def host_memory(plan: Plan) -> tuple[str, str]:
    """Request and limit: the weights pass through host memory while loading."""
    weights = plan.per_gpu.weights * plan.gpus
    return _gib(weights + 8 * GIB), _gib(2 * weights + 16 * GIB)


def shm_size(gpus: int) -> str:
    """NCCL's buffers plus headroom; only mounted when gpus > 1."""
    return f"{max(2, 2 * gpus)}Gi"


def build(inputs: ChartInputs) -> dict:
    plan, w = inputs.plan, inputs.plan.workload
    request, limit = host_memory(plan)
    src = inputs.source
    model_bytes = plan.per_gpu.weights * plan.gpus
    return {
        "gpus": inputs.gpus,
        "image": {
            "repository": inputs.image_repository,
            "tag": inputs.image_tag,
            "digest": inputs.image_digest,
        },
        "model": {
            "name": inputs.name,
            "source": src.kind,
            "path": "/opt/gkit/model" if src.kind == "baked" else "/models/model",
            "manifestDigest": inputs.manifest_digest,
            "pvc": {
                "existingClaim": src.existing_claim,
                "create": not src.existing_claim,
                "size": _gib(model_bytes * 1.5 + 2 * GIB),
                "storageClassName": src.storage_class,
                "loader": src.loader,
            },
            "hf": {
                "repoId": src.hf_repo,
                "revision": src.hf_revision,
                "tokenSecret": {"name": src.hf_token_secret, "key": "token"},
                "cacheSize": _gib(model_bytes * 1.5 + 2 * GIB),
            },
        },
        "verify": {
            "policy": inputs.policy,
            "args": inputs.verify_args,
            "trustConfigMap": inputs.trust_config_map,
            "trustFiles": inputs.trust_files,
        },
        "runtime": {
            "port": inputs.port,
            "device": inputs.device,
            "dtype": inputs.dtype,
            "maxModelLen": w.context,
            "maxNumSeqs": w.concurrency,
        },
        "resources": {
            "requests": {"cpu": str(4 * inputs.gpus), "memory": request},
            "limits": {"memory": limit},
        },
        "shm": {"sizeLimit": shm_size(inputs.gpus)},
        "plan": {
            "gpu": plan.gpu.name,
            "context": w.context,
            "concurrency": w.concurrency,
            "perGpuBytes": plan.per_gpu.total,
            "budgetPerGpuBytes": plan.budget_per_gpu,
        },
    }
