"""What the GPU benchmarks share: timing, the copy bandwidth they divide by, a profile of
one step, the Hopper occupancy rule, and random-weight models (in memory, or written once as
a checkpoint) with the demo model's initialisation.

The benchmark scripts import from here and never from each other."""

from __future__ import annotations

import gc
import json
import math
import time
import zlib
from pathlib import Path

import torch

from granite_ops_kit import catalog
from granite_ops_kit.demo.weights import tensor_specs
from granite_runtime.kernels import select
from granite_runtime.model.granite import GraniteForCausalLM
from granite_runtime.parallel import tp
from granite_runtime.spec.config import GraniteConfig


def copy_bandwidth(gib: float = 2.0) -> float:
    """GB/s of a device-to-device copy, counting bytes read and written."""
    a = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (time.perf_counter() - t) / 1e9


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank), nan for none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def timed(fn, repeat: int) -> float:
    """Seconds per call of fn, after one warm call, the device synchronised around."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def profile_step(fn, top: int = 12) -> str:
    """The kernels one step spends its device time in (torch.profiler), as a short table."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=top, max_name_column_width=60
    )


def programs_per_sm(warps: int, regs: int, shared: int) -> int:
    """How many programs of a kernel fit on one Hopper SM at once (32 programs, 64 warps,
    64K registers allocated 256 a warp at a time, 228 KB of shared memory)."""
    by_regs = 65536 // (((max(regs, 1) * 32 + 255) // 256) * 256 * warps)
    return min(32, 64 // warps, by_regs, (228 * 1024) // max(shared, 1))


def draw(name: str, shape, init, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(zlib.crc32(name.encode()))
    if init.kind == "normal":
        return torch.randn(shape, generator=g, device=device) * init.scale
    if init.kind == "uniform":
        return (torch.rand(shape, generator=g, device=device) * 2 - 1) * init.scale
    if init.kind == "ones_noise":
        return 1 + init.scale * torch.randn(shape, generator=g, device=device)
    if init.kind == "a_log":
        return torch.log(1 + 15 * torch.rand(shape, generator=g, device=device))
    if init.kind == "dt_bias":
        u = torch.rand(shape, generator=g, device=device)  # dt log-uniform in [1e-3, 1e-1]
        dt = torch.exp(math.log(1e-3) + u * (math.log(1e-1) - math.log(1e-3)))
        return dt + torch.log(-torch.expm1(-dt))
    raise ValueError(init.kind)


def random_model(raw: dict, rank: int, world: int, device: str) -> GraniteForCausalLM:
    """The model's rank-th part with every full tensor drawn on the GPU, then split.
    Under no_grad, not inference_mode: CUDA graph capture later runs outside inference
    mode, where inference tensors cannot be used."""
    full = GraniteConfig.from_dict(raw)
    with torch.device("meta"):
        model = GraniteForCausalLM(tp.local_config(full, world))
    state = {}
    for name, shape, init in tensor_specs({**raw, "_init_std": 0.02}, 0.02):
        t = draw(name, shape, init, device).to(torch.bfloat16)
        state[name] = tp.shard(name, t, full, rank, world).contiguous()
        del t
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    select.apply(model, select.resolve(device, torch.bfloat16, world))
    return model.eval().requires_grad_(False)


def fresh() -> None:
    """Free what the last measurement left and reset the peak counters."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def catalog_config(name: str) -> dict:
    """Catalog model `name`'s config, as its checkpoint's config.json holds it."""
    return {**catalog.load_config(name), "model_type": "granitemoehybrid"}


def drawn_on_gpu(name: str) -> GraniteForCausalLM:
    """Catalog model `name` with random bf16 weights drawn on the GPU and no checkpoint:
    h-small's 64 GB would not fit the device machine's disk next to anything else."""
    with torch.no_grad():
        return random_model(catalog_config(name), 0, 1, "cuda")


def checkpoint(name: str, root: Path) -> Path:
    """A random-weight checkpoint of catalog model `name` under root (written once, drawn
    on the GPU: seconds, where the numpy demo-model writer took minutes)."""
    path = root / name
    if not (path / "config.json").exists():
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        raw = catalog_config(name)
        with torch.no_grad():
            state = random_model(raw, 0, 1, "cuda").state_dict()
        if raw.get("tie_word_embeddings", True):
            state.pop("lm_head.weight")  # safetensors stores no shared tensors
        save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
        (path / "config.json").write_text(json.dumps({**raw, "torch_dtype": "bfloat16"}))
        del state
        fresh()
        print(f"wrote {name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def word_tokenizer(path: Path) -> None:
    """A tokenizer covering the random model's whole vocabulary (token-id prompts; the
    server still decodes every token it streams, as it does for a real model)."""
    if (path / "tokenizer.json").exists():
        return
    from tokenizers import Tokenizer, decoders, models

    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    words = {f"\u0120w{i}": i for i in range(vocab)}  # byte-level text of " w{i}"
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="\u0120w0"))
    tokenizer.decoder = decoders.ByteLevel()  # decoded as Granite's byte-level BPE is
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w0"}))
