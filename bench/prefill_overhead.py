"""Where one eager prompt chunk's wall time goes on the GPU: host-side ops (self CPU time)
against device time, and how many kernels it launches. A 448-token chunk of h-micro takes
~47 ms where its device work is a few ms (bench/NOTES.md, the packed-step round).

Run on the device: python bench/prefill_overhead.py --model granite-4.0-h-micro --length 448
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "runtime"), str(HERE.parent)]

import torch  # noqa: E402
from common import checkpoint, timed  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from granite_runtime.engine.batch import Batch  # noqa: E402
from granite_runtime.engine.cache import HybridCache  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="granite-4.0-h-micro")
    ap.add_argument("--root", default="/tmp/gkit-models")
    ap.add_argument("--length", type=int, default=448)
    args = ap.parse_args()
    model = load_model(checkpoint(args.model, Path(args.root)), "bfloat16", "cuda")
    cache = HybridCache(model.config, 2, 4096, torch.bfloat16, "cuda")
    tokens = torch.randint(100, 1000, (1, args.length), device="cuda")
    with torch.inference_mode():
        call = lambda: model(tokens, Batch.make([0], [0], "cuda"), cache)  # noqa: E731
        print(f"{torch.cuda.get_device_name()}: {args.length} tokens, "
              f"{1e3 * timed(call, 5):.2f} ms a call", flush=True)  # fmt: skip
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    device_ms = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    print(f"kernels launched: {kernels}, device time {device_ms / 1e3:.2f} ms", flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=50))


if __name__ == "__main__":
    main()
