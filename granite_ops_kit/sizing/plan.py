"""A capacity plan: does the workload fit, how much room is left, and what it would take.

Every answer is computed from the engine's footprint on one GPU (engines.py), searched
where it must be (most sessions, longest context) since footprints are monotone in both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from granite_ops_kit.errors import UsageError
from granite_ops_kit.sizing import engines
from granite_ops_kit.sizing.engines import Footprint, Workload
from granite_ops_kit.sizing.gpus import GPU
from granite_ops_kit.sizing.source import ModelShape, comparison_shape
from granite_runtime.spec import memory
from granite_runtime.spec.config import GraniteConfig
from granite_runtime.spec.errors import ModelLoadError

IBM_CLAIM = (
    "IBM: Granite 4.0 hybrids need over 70% less memory than conventional LLMs, for "
    "long contexts and many concurrent sessions"
)
TP_SIZES = (1, 2, 4, 8)
SEARCH_LIMIT = 1 << 22  # 4M sessions or tokens: far beyond any GPU


@dataclass(frozen=True)
class Request:
    shape: ModelShape
    gpu: GPU
    gpus: int
    engine: str
    workload: Workload


def parse_config(shape: ModelShape) -> GraniteConfig:
    try:
        return GraniteConfig.from_dict(shape.config, shape.name)
    except ModelLoadError as bad:
        raise UsageError(str(bad)) from None


def valid_tp(c: GraniteConfig, tp: int) -> bool:
    """Heads must split evenly; a hybrid's Mamba heads too."""
    return c.num_heads % tp == 0 and (not c.mamba_layers or c.mamba_heads % tp == 0)


def budget(gpu: GPU, engine: str, utilization: float) -> int:
    """Bytes an engine may use per GPU. vLLM applies its utilization inside its own rules;
    gkit and llama.cpp are held to the same fraction so the comparison is fair."""
    return int(gpu.memory_bytes * (1.0 if engine == "vllm" else utilization))


def fits(c: GraniteConfig, r: Request, w: Workload, tp: int) -> tuple[bool, Footprint]:
    f = engines.footprint(r.engine, c, w, tp, r.gpu.memory_bytes)
    if r.engine == "vllm":
        ok = f.details["kv_budget_bytes"] > 0 and w.concurrency <= f.details["max_num_seqs"]
        return ok, f
    return f.total <= budget(r.gpu, r.engine, w.gpu_memory_utilization), f


def largest_fitting(ok, low: int = 0) -> int:
    """The largest n in [low, SEARCH_LIMIT] with ok(n), given ok is monotone decreasing."""
    if not ok(max(low, 1)):
        return 0
    lo, hi = max(low, 1), SEARCH_LIMIT
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def with_change(w: Workload, **change) -> Workload:
    return Workload(**{**w.__dict__, **change})


@dataclass(frozen=True)
class DecodeBound:
    """Tokens/s if a decode step only had to read its bytes once at the GPU's bandwidth."""

    bytes_per_step_per_gpu: int
    step_ms: float
    tokens_per_s_per_session: float
    tokens_per_s_total: float


@dataclass(frozen=True)
class ModelMemory:
    weights: int
    cache: int
    total: int
    cache_only: int


@dataclass(frozen=True)
class Comparison:
    """The hybrid against its dense sibling (or an all-attention twin), weights + caches."""

    against: str
    models: dict[str, ModelMemory]
    less_memory_with_weights: float
    less_cache_memory: float
    ibm_claim: str = IBM_CLAIM


@dataclass(frozen=True)
class Plan:
    """`gkit size`'s answer; `to_json` is what `--json` prints and plan.json holds."""

    model: str
    source: str
    engine: str
    gpu: GPU
    gpus: int
    workload: Workload
    fits: bool
    per_gpu: Footprint
    budget_per_gpu: int
    max_sessions_at_context: int
    max_context_at_concurrency: int
    model_max_context: int
    fewest_gpus: int | None
    parameters: int
    active_parameters: int
    kv_bytes_per_token: int
    state_bytes_per_sequence: int
    decode_bound: DecodeBound
    comparison: Comparison

    def to_json(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            **fields,
            "gpu": self.gpu.to_json(),
            "workload": dataclasses.asdict(self.workload),
            "per_gpu": self.per_gpu.to_json(),
            "decode_bound": dataclasses.asdict(self.decode_bound),
            "comparison": dataclasses.asdict(self.comparison),
        }


def decode_bound(c: GraniteConfig, r: Request, tp: int) -> DecodeBound:
    w = r.workload
    weights = memory.weight_bytes_per_gpu(c, engines.BITS[w.weights_dtype], tp)
    if c.num_experts:
        # Experts a step touches: each of E is missed by all B tokens' top-k with (1-k/E)^B.
        touched = c.num_experts * (1 - (1 - c.top_k / c.num_experts) ** w.concurrency)
        expert_bytes = (
            c.num_layers
            * c.num_experts
            * 3
            * c.hidden_size
            * c.expert_size
            / tp
            * engines.BITS[w.weights_dtype]
            / 8
        )
        weights -= int(expert_bytes * (1 - touched / c.num_experts))
    kv = w.concurrency * w.context * memory.kv_bytes_per_token_per_gpu(c, w.kv_dtype, tp)
    state = 2 * w.concurrency * memory.state_bytes_per_sequence_per_gpu(c, w.state_dtype, tp)
    step = (weights + kv + state) / (r.gpu.bandwidth_gbs * 1e9)
    return DecodeBound(int(weights + kv + state), step * 1e3, 1 / step, w.concurrency / step)


def compare(r: Request) -> Comparison:
    name, other_config = comparison_shape(r.shape)
    w = r.workload
    rows = {}
    for label, config in ((r.shape.name, r.shape.config), (name, other_config)):
        c = GraniteConfig.from_dict(config, label)
        kv = w.context * w.concurrency * memory.kv_bytes_per_token(c, _runtime(w.kv_dtype))
        state = w.concurrency * memory.state_bytes_per_sequence(c, _runtime(w.state_dtype))
        weights = memory.weight_bytes_per_gpu(c, engines.BITS[w.weights_dtype], 1)
        cache = int(kv + state)
        rows[label] = ModelMemory(weights, cache, int(weights + kv + state), cache)
    mine, theirs = rows[r.shape.name], rows[name]
    return Comparison(
        name,
        rows,
        1 - mine.total / theirs.total,
        1 - mine.cache / theirs.cache if theirs.cache else 0,
    )


def _runtime(dtype: str) -> str:
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)


def make_plan(r: Request) -> Plan:
    c = parse_config(r.shape)
    tp, w = r.gpus, r.workload
    if not valid_tp(c, tp):
        raise UsageError(
            f"{r.shape.name} cannot be split over {tp} GPUs: {c.num_heads} "
            f"attention heads and {c.mamba_heads} Mamba heads must divide evenly."
        )
    ok, f = fits(c, r, w, tp)
    sessions = largest_fitting(lambda n: fits(c, r, with_change(w, concurrency=n), tp)[0])
    context = largest_fitting(lambda n: fits(c, r, with_change(w, context=n), tp)[0])
    fewest = next((n for n in TP_SIZES if valid_tp(c, n) and fits(c, r, w, n)[0]), None)
    return Plan(
        model=r.shape.name,
        source=r.shape.source,
        engine=r.engine,
        gpu=r.gpu,
        gpus=tp,
        workload=w,
        fits=ok,
        per_gpu=f,
        budget_per_gpu=budget(r.gpu, r.engine, w.gpu_memory_utilization),
        max_sessions_at_context=sessions,
        max_context_at_concurrency=context,
        model_max_context=c.max_position_embeddings,
        fewest_gpus=fewest,
        parameters=memory.parameter_count(c),
        active_parameters=memory.parameter_count(c, active_only=True),
        kv_bytes_per_token=memory.kv_bytes_per_token(c, _runtime(w.kv_dtype)),
        state_bytes_per_sequence=memory.state_bytes_per_sequence(c, _runtime(w.state_dtype)),
        decode_bound=decode_bound(c, r, tp),
        comparison=compare(r),
    )


def require_fit(plan: Plan) -> Plan:
    """The plan, or PlanDoesNotFit saying by how much and what would fit."""
    if plan.fits:
        return plan
    from granite_ops_kit.errors import PlanDoesNotFit
    from granite_ops_kit.units import format_bytes

    w = plan.workload
    raise PlanDoesNotFit(
        f"{plan.model}: {w.concurrency} sessions x {w.context:,} tokens need "
        f"{format_bytes(plan.per_gpu.total)} per GPU on {plan.gpus} x {plan.gpu.name}, the "
        f"budget is {format_bytes(plan.budget_per_gpu)}; at most "
        f"{plan.max_sessions_at_context} sessions fit, or use "
        f"{plan.fewest_gpus or 'more than 8'} GPUs.",
        details=plan.to_json(),
    )


def plan_and_record(r: Request, recorder) -> Plan:
    """`gkit size`'s plan, with capacity.planned recorded before anyone acts on it."""
    from granite_ops_kit.audit import events

    plan = make_plan(r)
    recorder.record(events.capacity_planned(r, plan))
    return plan
