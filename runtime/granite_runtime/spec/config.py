"""A Granite 4.0 `config.json`, read once into a typed, validated shape.

Pure Python (no torch), so the control plane's sizing can read configs without the runtime's
heavy dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from granite_runtime.spec import bounded_read
from granite_runtime.spec.errors import ModelLoadError

# Hub configs say mamba/attention; transformers 5.x save_pretrained writes
# linear_attention/full_attention (REFERENCE.md section 1). Both mean the same layers.
LAYER_SPELLINGS = {
    "mamba": "mamba",
    "linear_attention": "mamba",
    "attention": "attention",
    "full_attention": "attention",
}
MODEL_TYPES = {"granitemoehybrid"}
MAX_CONFIG_BYTES = 4 << 20
MAX_DIMENSION = 1 << 24  # above any real width, vocabulary or context; keeps arithmetic sane
ALWAYS_POSITIVE = (
    "vocab_size",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "max_position_embeddings",
    "shared_size",
    "mamba_groups",
)
MAMBA_POSITIVE = ("mamba_heads", "mamba_head_dim", "mamba_state", "mamba_conv", "mamba_chunk")
NON_NEGATIVE = ("num_experts", "top_k", "expert_size")


def _float(value) -> float:
    """A float as configs write it; transformers 5 saves infinity as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
    return float(value)


def _rope_theta(raw: dict) -> float:
    """transformers 5 moved rope_theta into rope_parameters; Hub configs keep it at the top."""
    params = raw.get("rope_parameters") or {}
    return _float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))


@dataclass(frozen=True)
class GraniteConfig:
    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attention_multiplier: float
    attention_bias: bool
    use_rope: bool
    rope_theta: float
    max_position_embeddings: int
    num_experts: int
    top_k: int
    expert_size: int
    shared_size: int
    mamba_heads: int
    mamba_head_dim: int
    mamba_state: int
    mamba_groups: int
    mamba_conv: int
    mamba_chunk: int
    mamba_conv_bias: bool
    mamba_proj_bias: bool
    embedding_multiplier: float
    residual_multiplier: float
    logits_scaling: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    torch_dtype: str
    eos_token_id: int | None
    time_step_min: float = 0.0
    time_step_max: float = float("inf")
    # Set by tp.local_config on a rank's share of a model split over tp_size GPUs.
    tp_size: int = 1
    mamba_norm_across_ranks: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "attention"]

    @property
    def mamba_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "mamba"]

    @property
    def mamba_inner(self) -> int:
        return self.mamba_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:
        return self.mamba_inner + 2 * self.mamba_groups * self.mamba_state

    def check_shape(self) -> None:
        """Every size a positive integer of sane magnitude, before anything divides by one
        or allocates from one (a config is as untrusted as any file of the model)."""
        mamba = MAMBA_POSITIVE if self.mamba_layers else ()
        for name in (*ALWAYS_POSITIVE, *mamba, *NON_NEGATIVE):
            value = getattr(self, name)
            low = 0 if name in NON_NEGATIVE else 1
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} is {value!r}, not an integer")
            if not low <= value <= MAX_DIMENSION:
                raise ValueError(f"{name} is {value}; it must be {low} to {MAX_DIMENSION:,}")
        if self.num_experts and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"num_experts_per_tok {self.top_k} is not 1 to {self.num_experts}")
        if self.num_experts and not self.expert_size:
            raise ValueError("a model with experts needs intermediate_size")
        eos = self.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        if eos is not None and not all(
            isinstance(i, int) and 0 <= i < self.vocab_size for i in ids
        ):
            raise ValueError(f"eos_token_id {eos!r} is not a token id or a list of token ids")
        if not self.layer_types:
            raise ValueError("the model has no layers")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> GraniteConfig:
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{source}: not a JSON object.")
        if raw.get("model_type") not in MODEL_TYPES:
            raise ModelLoadError(
                f"{source}: model_type '{raw.get('model_type')}' is not a "
                f"Granite 4.0 model (expected one of {sorted(MODEL_TYPES)})."
            )
        try:
            return cls._parse(raw)
        except KeyError as missing:
            raise ModelLoadError(f"{source}: required key {missing} is missing.") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError, IndexError) as bad:
            raise ModelLoadError(f"{source}: {bad}.") from None

    @classmethod
    def _parse(cls, raw: dict) -> GraniteConfig:
        hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
        types = raw.get("layer_types") or raw.get("layers_block_type")
        if types is None:
            raise KeyError("layer_types")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise ValueError("layer_types is not a list of layer names")
        if not isinstance(heads, int) or isinstance(heads, bool) or heads <= 0:
            raise ValueError(f"num_attention_heads is {heads!r}, not a positive integer")
        unknown = sorted({t for t in types if t not in LAYER_SPELLINGS})
        if unknown:
            raise ValueError(f"unknown layer types {unknown}")
        if len(types) != raw.get("num_hidden_layers", len(types)):
            raise ValueError("layer_types and num_hidden_layers disagree")
        limit = raw.get("time_step_limit") or (0.0, float("inf"))
        config = cls(
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            layer_types=tuple(LAYER_SPELLINGS[t] for t in types),
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads", heads),
            head_dim=raw.get("head_dim") or hidden // heads,
            attention_multiplier=float(raw["attention_multiplier"]),
            attention_bias=bool(raw.get("attention_bias", False)),
            use_rope=raw.get("position_embedding_type", "nope") == "rope",
            rope_theta=_rope_theta(raw),
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            num_experts=raw.get("num_local_experts", 0) or 0,
            top_k=raw.get("num_experts_per_tok", 0) or 0,
            expert_size=raw.get("intermediate_size", 0),
            shared_size=raw["shared_intermediate_size"],
            mamba_heads=raw.get("mamba_n_heads", 0),
            mamba_head_dim=raw.get("mamba_d_head", 0),
            mamba_state=raw.get("mamba_d_state", 0),
            mamba_groups=raw.get("mamba_n_groups", 1),
            mamba_conv=raw.get("mamba_d_conv", 4),
            mamba_chunk=raw.get("mamba_chunk_size", 256),
            mamba_conv_bias=bool(raw.get("mamba_conv_bias", True)),
            mamba_proj_bias=bool(raw.get("mamba_proj_bias", False)),
            embedding_multiplier=float(raw.get("embedding_multiplier", 1.0)),
            residual_multiplier=float(raw.get("residual_multiplier", 1.0)),
            logits_scaling=float(raw.get("logits_scaling", 1.0)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
            eos_token_id=raw.get("eos_token_id"),
            time_step_min=_float(limit[0]),
            time_step_max=_float(limit[1]),
        )
        config.check_shape()
        if config.mamba_layers and config.mamba_inner != int(raw.get("mamba_expand", 2) * hidden):
            raise ValueError("mamba_n_heads x mamba_d_head must equal mamba_expand x hidden_size")
        if config.num_heads % config.num_kv_heads or (
            config.mamba_layers and config.mamba_heads % config.mamba_groups
        ):
            raise ValueError("heads must divide evenly into key/value heads and Mamba groups")
        return config

    @classmethod
    def from_file(cls, path: Path) -> GraniteConfig:
        try:
            raw = bounded_read.read_json(path, MAX_CONFIG_BYTES)
        except bounded_read.UnsafeInput as bad:
            if bad.missing:
                raise ModelLoadError(f"{path}: no config.json in the model directory.") from None
            raise ModelLoadError(bad.message) from None
        return cls.from_dict(raw, str(path))
