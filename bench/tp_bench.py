"""Tensor parallelism on one host's GPUs: TP=1 against TP=2, same random weights, same run.

For each model, world sizes 1 and 2 (one process per GPU, NCCL, the engine's own protocol:
rank 0 announces each call, rank 1 follows): the logits of a 64-token prompt (TP=2 against
TP=1, relative error), prefill tok/s of one long prompt, decode tok/s at each batch size
(CUDA graphs, NCCL all-reduces captured inside them), and peak reserved memory per GPU.
Weights are drawn on the GPU from per-tensor seeds (the demo model's initialisation), so no
checkpoint is written: h-small would take an hour to write on the device.

    python3 bench/tp_bench.py [--models granite-4.0-h-micro granite-4.0-h-small]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing

import torch
from common import catalog_config, random_model, timed

from granite_runtime.engine.engine import Engine
from granite_runtime.parallel import tp


def _measure(engine: Engine, vocab: int, prompt: int, batches: list[int]) -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    check = torch.randint(0, vocab, (1, 64), generator=g).cuda()
    engine._reset(0)
    out["logits"] = engine._forward(check, [0], [0], decode=False)[0, -1].float().cpu().tolist()
    long = torch.randint(0, vocab, (1, prompt), generator=g).cuda()
    secs = timed(lambda: engine._forward(long, [0], [0], decode=False), 2)
    out["prefill_tok_s"] = prompt / secs
    for b in batches:
        tokens = torch.randint(0, vocab, (b, 1), generator=g).cuda()
        slots, starts = list(range(b)), [512] * b
        secs = timed(lambda t=tokens, s=slots, p=starts: engine._forward(t, s, p, True), 50)
        out[f"decode_b{b}_tok_s"] = b / secs
        out[f"decode_b{b}_ms"] = secs * 1e3
    return out


def _rank_main(rank, world, init_method, raw, prompt, batches, queue) -> None:
    tp.init(rank, world, init_method, f"cuda:{rank}")
    try:
        with torch.no_grad():
            model = random_model(raw, rank, world, f"cuda:{rank}")
        torch.cuda.synchronize()
        engine = Engine(model, None, max_num_seqs=max(batches), max_model_len=prompt + 64)
        if rank != 0:
            engine.follow()
        else:
            with torch.inference_mode():
                result = _measure(engine, raw["vocab_size"], prompt, batches)
            engine.stop()
            result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            queue.put(result)
    finally:
        tp.shutdown()


def run_world(raw: dict, world: int, prompt: int, batches: list[int]) -> dict:
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    init_method = f"tcp://127.0.0.1:{tp.free_port()}"
    procs = [
        spawn.Process(target=_rank_main, args=(r, world, init_method, raw, prompt, batches, queue))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    result = queue.get(timeout=1200)
    for p in procs:
        p.join(120)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["granite-4.0-h-micro", "granite-4.0-h-small"])
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    print(
        f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    )
    for name in args.models:
        raw = catalog_config(name)
        rows = {w: run_world(raw, w, args.prompt, args.batches) for w in (1, 2)}
        one, two = (torch.tensor(rows[w].pop("logits")) for w in (1, 2))
        rel = ((two - one).norm() / one.norm()).item()
        print(
            f"\n{name}: logits TP=2 vs TP=1, relative error {rel:.2e} (bf16), "
            f"same argmax: {bool(one.argmax() == two.argmax())}"
        )
        for key in rows[1]:
            a, b = rows[1][key], rows[2][key]
            ratio = f"{b / a:.2f}x" if "tok_s" in key else ""
            print(f"  {key:<22} TP=1 {a:>10.1f}   TP=2 {b:>10.1f}   {ratio}")
        print(json.dumps({"model": name, "rel_err": rel, "tp1": rows[1], "tp2": rows[2]}))


if __name__ == "__main__":
    main()
