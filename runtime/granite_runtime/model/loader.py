"""Load a Hugging Face Granite checkpoint: config.json and safetensors, never pickle.

Weights are memory-mapped by safetensors and copied once into the model's dtype and
device. Every file the index names must resolve inside the model directory: a symlink or a
`..` that leads elsewhere is refused, so a checkpoint cannot make the loader read other files.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open

from granite_runtime.kernels import select
from granite_runtime.kernels.choice import KernelChoice
from granite_runtime.layers import fp8
from granite_runtime.model.granite import GraniteForCausalLM
from granite_runtime.parallel import tp
from granite_runtime.spec import bounded_read
from granite_runtime.spec.config import GraniteConfig
from granite_runtime.spec.errors import ModelLoadError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


def resolve_dtype(name: str | None, config: GraniteConfig) -> torch.dtype:
    key = (name or config.torch_dtype).lower().removeprefix("torch.")
    if key == "auto":
        key = config.torch_dtype
    if key not in DTYPES:
        raise ModelLoadError(
            f"unknown dtype '{name}'; use float32, bfloat16, float16, "
            "or fp8 on a GPU with FP8 tensor cores."
        )
    return DTYPES[key]


def _inside(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ModelLoadError(f"{root / name}: points outside the model directory; refused.")
    return path


def weight_files(root: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from its index when it is sharded."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            doc = bounded_read.read_json(index, MAX_INDEX_BYTES)
        except bounded_read.UnsafeInput as bad:
            raise ModelLoadError(bad.message) from None
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(n, str) and n for n in weight_map.values()
        ):
            raise ModelLoadError(
                f"{index}: not a valid safetensors index (weight_map must map tensor names "
                "to shard file names)."
            )
        files = [_inside(root, n) for n in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(
                f"{root}: shard {missing[0]} named in model.safetensors.index.json is missing."
            )
        return files
    single = root / "model.safetensors"
    if single.is_file():
        return [_inside(root, single.name)]
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{root}: only pickle weights ({pickles[0]}); gkit loads "
            "safetensors only, since pickle files can run code."
        )
    raise ModelLoadError(f"{root}: no model.safetensors or model.safetensors.index.json.")


MAX_INDEX_BYTES = 64 << 20  # an index of 100k tensors is ~10 MB
ALIGN = 256  # bytes; each weight starts on a boundary GEMM kernels like


def _headers(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Every tensor's file and shape, read from the headers only."""
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    found[name] = (path, tuple(f.get_slice(name).get_shape()))
        except Exception as bad:  # safetensors' own error type is not public
            raise ModelLoadError(f"{path}: not a readable safetensors file ({bad}).") from None
    return found


def _read_tensors(
    files: list[Path], dtype: torch.dtype, device: str, part=None, one_buffer: bool = True
) -> dict[str, torch.Tensor]:
    """All weights (with `part`, this rank's part of each: part(name, tensor)); on a GPU as
    views into one buffer.

    One allocation instead of hundreds: the GPU caching allocator rounds each large block up
    to 2 MiB, which for a 3B model wastes about 2% of memory and would make the memory
    model's prediction of the weights inexact. On the CPU the tensors stay separate (the
    engine repacks them for oneDNN anyway).
    """
    headers = _headers(files)
    if part is not None:  # the shapes of the parts, worked out on shape-only tensors
        headers = {
            name: (path, tuple(part(name, torch.empty(shape, device="meta")).shape))
            for name, (path, shape) in headers.items()
        }
    flat, offsets = None, {}
    if torch.device(device).type != "cpu" and one_buffer:
        step = ALIGN // torch.empty((), dtype=dtype).element_size()
        total = 0
        for name, (_, shape) in headers.items():
            offsets[name] = total
            total += -(-math.prod(shape) // step) * step
        flat = torch.empty(total, dtype=dtype, device=device)
    out: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensor = f.get_tensor(name)
                    if part is not None:
                        tensor = part(name, tensor)
                    if flat is None:
                        out[name] = tensor.to(device=device, dtype=dtype)
                        continue
                    shape = headers[name][1]
                    view = flat[offsets[name] : offsets[name] + math.prod(shape)].view(shape)
                    out[name] = view.copy_(tensor)
        except Exception as bad:  # safetensors' own error type is not public
            raise ModelLoadError(f"{path}: not a readable safetensors file ({bad}).") from None
    return out


def _check_shapes(model: GraniteForCausalLM, tensors: dict[str, torch.Tensor], root: Path):
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ModelLoadError(
            f"{root}: tensor {missing[0]} is missing ({len(missing)} missing in all)."
        )
    for name, tensor in tensors.items():
        if name in expected and tuple(tensor.shape) != expected[name]:
            raise ModelLoadError(
                f"{root}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the config implies {expected[name]}."
            )


def load_model(
    path: str | Path,
    dtype: str | None = None,
    device: str = "cpu",
    rank: int = 0,
    world: int = 1,
    kernels: KernelChoice | None = None,
) -> GraniteForCausalLM:
    """The model with weights loaded, in eval mode, on `device`, running `kernels` (by
    default what kernels.select.resolve finds for this device and dtype); with world > 1,
    rank's part of it for tensor parallelism (parallel/tp.py says how it splits)."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise ModelLoadError(f"{path}: not a model directory.")
    full = GraniteConfig.from_file(root / "config.json")
    config = tp.local_config(full, world)
    use_fp8 = (dtype or "").lower() in ("fp8", "float8")
    if use_fp8 and not fp8.supported(device):
        raise ModelLoadError(
            f"--dtype fp8 needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 "
            f"or newer: Ada, Hopper); {device} has none. Use bfloat16 there."
        )
    torch_dtype = resolve_dtype("bfloat16" if use_fp8 else dtype, full)
    part = None
    if world > 1:

        def part(name: str, t: torch.Tensor) -> torch.Tensor:
            return tp.shard(name, t, full, rank, world).contiguous()

    # fp8: separate tensors, so each bf16 weight is freed once its fp8 copy exists
    tensors = _read_tensors(weight_files(root), torch_dtype, device, part, one_buffer=not use_fp8)
    if config.tie_word_embeddings or "lm_head.weight" not in tensors:
        tensors["lm_head.weight"] = tensors.get("model.embed_tokens.weight")
    with torch.device("meta"):
        model = GraniteForCausalLM(config)
    tensors = {k: v for k, v in tensors.items() if v is not None}
    _check_shapes(model, tensors, root)
    model.load_state_dict(
        {n: tensors[n] for n, _ in model.named_parameters()}, strict=True, assign=True
    )
    if use_fp8:
        del tensors
        fp8.quantize_linears(model)
    select.apply(model, kernels or select.resolve(device, torch_dtype, world))
    return model.eval()
