"""Start the engine: load the model (or this rank's part of it), size the pools; with
tensor parallelism, start the follower ranks first. No HTTP here (serve.py adds it), so
benchmarks and tests can start a split engine without the server's dependencies."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import torch

from granite_runtime.engine.engine import Engine
from granite_runtime.engine.tokenizer import TextCodec
from granite_runtime.model.loader import load_model
from granite_runtime.parallel import tp
from granite_runtime.spec.config import GraniteConfig
from granite_runtime.spec.errors import ModelLoadError
from granite_runtime.spec.memory import PREFILL_CHUNK


def start_engine(
    model_path: str | Path,
    device: str = "cpu",
    dtype: str | None = None,
    max_num_seqs: int = 8,
    max_model_len: int | None = None,
    gpus: int = 1,
    prefill_chunk: int = PREFILL_CHUNK,
    prefill_beside_decode: bool = True,
) -> Engine:
    """The engine, on rank 0. With gpus > 1 the model is split over that many processes
    (tensor parallelism, tp.py): this one is rank 0; the others are started here and
    follow its steps until `Engine.stop`. On the CPU, gpus > 1 means processes over gloo,
    which is how the tests exercise the split without GPUs. `prefill_chunk`: tokens of
    one prompt per step (Engine); `prefill_beside_decode`: prompts on a stream of their
    own (Engine; one GPU only)."""
    root = Path(model_path).resolve()
    config = GraniteConfig.from_file(root / "config.json")
    max_len = max_model_len or min(config.max_position_embeddings, 4096)
    settings = (str(root), device, dtype, max_num_seqs, max_len, prefill_chunk)
    if gpus > 1:
        tp.local_config(config, gpus)  # a model that does not split fails here, in one sentence
        _check_devices(device, gpus)
        _start_followers(gpus, settings)
    return _engine(0, gpus, *settings, beside=prefill_beside_decode)


def _rank_device(device: str, rank: int) -> str:
    return f"cuda:{rank}" if device.startswith("cuda") else device


def _check_devices(device: str, gpus: int) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() < gpus:
        raise ModelLoadError(
            f"--gpus {gpus} needs {gpus} GPUs; this machine shows {torch.cuda.device_count()}."
        )


def _engine(
    rank: int, world: int, root: str, device: str, dtype, max_num_seqs, max_len, chunk,
    beside: bool = True,
):  # fmt: skip
    model = load_model(root, dtype, _rank_device(device, rank), rank, world)
    codec = TextCodec.from_dir(Path(root))
    return Engine(
        model, codec, max_num_seqs=max_num_seqs, max_model_len=max_len, prefill_chunk=chunk,
        prefill_beside_decode=beside,
    )  # fmt: skip


def _start_followers(world: int, settings: tuple) -> None:
    """Start ranks 1..world-1 (daemon processes: they end with this one), then join the
    process group as rank 0."""
    init_method = f"tcp://127.0.0.1:{tp.free_port()}"
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used after fork
    for rank in range(1, world):
        spawn.Process(
            target=_follow,
            args=(rank, world, init_method, settings, os.getpid()),
            name=f"gkit-rank{rank}",
            daemon=True,
        ).start()
    _init_rank(0, world, init_method, settings[1])


def _init_rank(rank: int, world: int, init_method: str, device: str) -> None:
    if device == "cpu":  # processes share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    tp.init(rank, world, init_method, _rank_device(device, rank))


def _follow(rank: int, world: int, init_method: str, settings: tuple, parent: int) -> None:
    """A follower rank's whole life: join, load its part, capture, follow rank 0 (whose
    pid, `parent`, is passed in: read here, it could already be a reaper's)."""
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    _init_rank(rank, world, init_method, settings[1])
    try:
        _engine(rank, world, *settings).follow()
    finally:
        tp.shutdown()


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """End this follower when rank 0's process is gone. A daemon process is only ended on
    rank 0's clean exit; after a SIGKILL (the OOM killer, a forced pod delete) a follower
    waiting in an NCCL collective would otherwise hang until NCCL's timeout, holding its
    GPU's memory. (Over gloo the broken connection already ends it.)"""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)
