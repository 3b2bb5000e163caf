"""Tensor parallelism over the GPUs of one host: how weights are split, the collectives, and
the step protocol between the rank that schedules and the ranks that follow.

Layout (Megatron-style, as gpt-fast's tp.py does for dense models):
- attention: q/k/v split by heads (column-parallel), o_proj by its input (row-parallel);
- Mamba-2: z, x, dt, A, D, dt_bias, the conv's x channels and the gated norm split by heads;
  B and C split by group when the groups divide evenly, else (one group) kept whole on every
  rank; out_proj row-parallel. With one group the gated RMSNorm spans all ranks, so its sum
  of squares is all-reduced (one scalar per token);
- shared MLP and MoE experts: each expert's intermediate size split (gate and up halves
  alike), output row-parallel; the router is replicated so every rank picks the same experts;
- the embedding table and lm_head split by vocabulary rows (tied or not): a rank looks up
  the tokens in its range, an all-reduce completes the embeddings, and the logits of the
  last tokens are all-gathered, so every rank ends with the same full logits;
- norms and the router replicated.
So each layer needs two all-reduces of a hidden-size vector per token (mixer, then MLP+MoE),
plus the norm's scalar where the groups do not split. This is the split `gkit size` assumes
(memory.weight_bytes_per_gpu).

Processes: one per GPU. Rank 0 runs the engine and the HTTP server; before every model call
it broadcasts (what, tokens, slots, positions) and the other ranks make the same call
(`follow`). Every rank captures the same CUDA graphs in the same order at start-up, so the
collectives inside them line up.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from granite_runtime.spec.config import GraniteConfig
from granite_runtime.spec.errors import ModelLoadError

_world = 1
_rank = 0

# Step protocol: a 4-number header (op, rows, token rows, tokens), then the payload:
# tokens, slots, starts and, packed (OP_PACKED), each row's token count.
OP_STOP, OP_FORWARD, OP_DECODE, OP_RESET, OP_KEEPALIVE, OP_PACKED = 0, 1, 2, 3, 4, 5
# An idle rank 0 sends a keepalive this often, so no rank waits in a collective long enough
# to hit the process group's timeout (NCCL's watchdog would end the process).
KEEPALIVE_SECONDS = 60.0


def world_size() -> int:
    return _world


def rank() -> int:
    return _rank


def init(rank_: int, world: int, init_method: str, device: str) -> None:
    """Join the process group: NCCL for CUDA, gloo for the CPU (tests run TP on the CPU)."""
    global _world, _rank
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank_)
    dist.init_process_group(backend, init_method=init_method, rank=rank_, world_size=world)
    _world, _rank = world, rank_


def shutdown() -> None:
    global _world, _rank
    if dist.is_initialized():
        dist.destroy_process_group()
    _world, _rank = 1, 0


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; the identity on one rank."""
    if _world > 1:
        dist.all_reduce(x)
    return x


# ---- splitting the model ---------------------------------------------------------------
def local_config(config: GraniteConfig, world: int) -> GraniteConfig:
    """The shapes one rank holds; a sentence for a model that does not split `world` ways."""
    if world == 1:
        return config
    sizes = {
        "attention heads": config.num_heads if config.attention_layers else 0,
        "key/value heads": config.num_kv_heads if config.attention_layers else 0,
        "Mamba heads": config.mamba_heads if config.mamba_layers else 0,
        "vocabulary rows": config.vocab_size,
        "shared MLP width": config.shared_size,
        "expert width": config.expert_size if config.num_experts else 0,
    }
    for what, n in sizes.items():
        if n % world:
            raise ModelLoadError(f"the model's {n} {what} do not split evenly over {world} GPUs.")
    groups = config.mamba_groups
    if config.mamba_layers and groups > 1 and groups % world:
        raise ModelLoadError(
            f"the model's {groups} Mamba groups do not split evenly over {world} GPUs."
        )
    split_groups = groups % world == 0
    return dataclasses.replace(
        config,
        num_heads=config.num_heads // world,
        num_kv_heads=config.num_kv_heads // world,
        mamba_heads=config.mamba_heads // world,
        mamba_groups=groups // world if split_groups else groups,
        shared_size=config.shared_size // world,
        expert_size=config.expert_size // world,
        tp_size=world,
        mamba_norm_across_ranks=not split_groups and bool(config.mamba_layers),
    )


def _part(t: torch.Tensor, dim: int, r: int, world: int) -> torch.Tensor:
    return t.chunk(world, dim=dim)[r]


def _pieces(t: torch.Tensor, sizes: list[int], split: list[bool], dim: int, r: int, world: int):
    """Split `t` along dim into consecutive pieces; take rank r's part of the split ones."""
    parts = t.split(sizes, dim=dim)
    kept = [_part(p, dim, r, world) if s else p for p, s in zip(parts, split, strict=True)]
    return torch.cat(kept, dim=dim)


def shard(name: str, t: torch.Tensor, config: GraniteConfig, r: int, world: int) -> torch.Tensor:
    """Rank r's part of checkpoint tensor `name` (full shape, `config` the full model's)."""
    if world == 1:
        return t
    leaf = name.rsplit(".", 2)[-2:]  # e.g. ["in_proj", "weight"]
    module, kind = leaf[0], leaf[1]
    inner, gn = config.mamba_inner, config.mamba_groups * config.mamba_state
    split_groups = config.mamba_groups % world == 0
    if module in ("q_proj", "k_proj", "v_proj"):
        return _part(t, 0, r, world)
    if module in ("o_proj", "out_proj"):
        if kind == "bias":  # added once, after the all-reduce would add it `world` times
            return t if r == 0 else torch.zeros_like(t)
        return _part(t, 1, r, world)
    if module == "in_proj":
        sizes = [inner, inner, gn, gn, config.mamba_heads]
        return _pieces(t, sizes, [True, True, split_groups, split_groups, True], 0, r, world)
    if module == "conv1d":
        return _pieces(t, [inner, gn, gn], [True, split_groups, split_groups], 0, r, world)
    if ".mamba." in name and (kind in ("A_log", "D", "dt_bias") or module == "norm"):
        return _part(t, 0, r, world)  # per head (the gated norm's weight: per channel)
    if module == "input_linear":  # (..., 2I, H): gate and up halves split alike
        dim = t.dim() - 2
        half = t.shape[dim] // 2
        return _pieces(t, [half, half], [True, True], dim, r, world)
    if module == "output_linear":  # (..., H, I)
        return _part(t, t.dim() - 1, r, world)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return _part(t, 0, r, world)
    return t  # norms, router: replicated


def embed(table: torch.nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """Embeddings from a vocabulary-split table: each rank fills the rows it holds."""
    if _world == 1:
        return table(tokens)
    rows = table.num_embeddings
    local = tokens - _rank * rows
    inside = (local >= 0) & (local < rows)
    x = table(local.clamp(0, rows - 1)) * inside.unsqueeze(-1).to(table.weight.dtype)
    return all_reduce(x)


def gather_logits(logits: torch.Tensor) -> torch.Tensor:
    """(..., vocab / world) on each rank -> (..., vocab) on every rank."""
    if _world == 1:
        return logits
    rows = logits.shape[0]
    out = logits.new_empty((_world * rows, *logits.shape[1:]))  # ranks stacked along dim 0
    dist.all_gather_into_tensor(out, logits.contiguous())
    return torch.cat(out.split(rows, dim=0), dim=-1)


# ---- the step protocol ---------------------------------------------------------------
def send_step(
    op: int, tokens: torch.Tensor, slots: list[int], starts: list[int], lengths: list[int] = ()
) -> None:
    """Rank 0: tell the other ranks which call comes next, with its inputs: tokens (B, L)
    for a plain batch, (1, T) with each row's `lengths` for a packed one (OP_PACKED)."""
    if _world == 1:
        return
    device = tokens.device
    header = [op, len(slots), tokens.shape[0], tokens.numel()]
    dist.broadcast(torch.tensor(header, dtype=torch.long, device=device), src=0)
    rest = torch.tensor(slots + starts + list(lengths), dtype=torch.long, device=device)
    dist.broadcast(torch.cat([tokens.reshape(-1), rest]), src=0)


def send_control(op: int, slot: int, device: torch.device) -> None:
    """Rank 0: a call with no tokens (reset a slot, stop)."""
    send_step(op, torch.zeros(1, 0, dtype=torch.long, device=device), [slot], [0])


def receive_step(device: torch.device) -> tuple[int, torch.Tensor, list[int], list[int], list[int]]:
    """Other ranks: the next call rank 0 announced (op, tokens, slots, starts, lengths)."""
    header = torch.empty(4, dtype=torch.long, device=device)
    dist.broadcast(header, src=0)
    op, rows, token_rows, count = header.tolist()
    per_row = 3 if op == OP_PACKED else 2
    payload = torch.empty(count + per_row * rows, dtype=torch.long, device=device)
    dist.broadcast(payload, src=0)
    tokens = payload[:count].view(token_rows, count // token_rows)
    rest = payload[count:].tolist()
    return op, tokens, rest[:rows], rest[rows : 2 * rows], rest[2 * rows :]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
