"""Do prompts beside the decode steps change a greedy token, and if so, why?

A stream decodes while three prompts arrive (one cancelled in flight), as
tests/test_runtime_chunk_graphs.py runs it, in four ways: prompts inside the steps, beside
them, beside them with the prefill stream waited on after every queueing (the same batches
as beside, nothing concurrent), and eagerly. Printed per way: where each sequence's tokens
first differ from the inside run, the gap between the top two logits there (a gap near
float32 rounding means a different batch shape flipped a near-tie; a large one means the
state was wrong), and the batch size of every decode step of the first stream.

Run on the device: python bench/beside_parity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "runtime"), str(HERE.parent)]

import torch  # noqa: E402

from granite_ops_kit.demo.checkpoint import write_demo_model  # noqa: E402
from granite_runtime.engine.engine import Engine  # noqa: E402
from granite_runtime.engine.prefill_stream import PrefillStream  # noqa: E402
from granite_runtime.engine.sampling import SamplingParams  # noqa: E402
from granite_runtime.engine.tokenizer import TextCodec  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: a smoke run only


def run(path: Path, how: str) -> tuple[list[list[int]], list[list[float]], list[int]]:
    codec = TextCodec.from_dir(path)
    engine = Engine(
        load_model(path, "float32", DEVICE), codec, prefill_beside_decode=how.startswith("beside"),
        max_num_seqs=4, max_model_len=512, prefill_chunk=128,
    )  # fmt: skip
    if how == "eager":
        engine.chunk_graphs = None
    gaps: dict[int, list[float]] = {}
    batches: list[int] = []
    accept = engine._accept

    def recording(seqs, logits):
        if seqs:
            top = logits.float().topk(2, dim=-1).values.reshape(len(seqs), 2)
            for seq, (a, b) in zip(seqs, top.tolist(), strict=True):
                gaps.setdefault(id(seq), []).append(a - b)
            if any(s is first for s in seqs):
                batches.append(len(seqs))
        accept(seqs, logits)

    engine._accept = recording
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    first = engine.submit([5, 6, 7, 8], params)
    for _ in range(3):
        engine.step()
    later = [engine.submit(list(range(9 + i, 9 + i + n)), params) for i, n in enumerate((300, 200))]
    gone = engine.submit(list(range(40, 290)), params)
    engine.step()
    gone.cancel()
    while engine.has_work():
        engine.step()
    seqs = [first, *later]
    return [s.output_ids for s in seqs], [gaps.get(id(s), []) for s in seqs], batches


def main() -> None:
    dest = Path(tempfile.mkdtemp()) / "hybrid-without-experts"
    path = write_demo_model(dest, "tiny-hybrid", overrides={"num_local_experts": 0}).path
    enqueue = PrefillStream.enqueue
    runs = {}
    for how in ("inside", "beside", "beside_synced", "eager", "beside_again"):
        if how == "beside_synced":

            def synced(self, seqs):  # every prompt done before the step goes on
                taken = enqueue(self, seqs)
                self.stream.synchronize()
                return taken

            PrefillStream.enqueue = synced
        else:
            PrefillStream.enqueue = enqueue
        runs[how] = run(path, how)
    ref_tokens = runs["inside"][0]
    for how, (tokens, gaps, batches) in runs.items():
        print(f"{how}: first stream's decode batch sizes {batches}")
        for i, (got, want, gap) in enumerate(zip(tokens, ref_tokens, gaps, strict=True)):
            at = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
            if at is None:
                print(f"  seq {i}: same as inside ({len(got)} tokens)")
            else:
                ref_gap = runs["inside"][1][i][at]
                print(
                    f"  seq {i}: differs from token {at}: {got[at]} vs {want[at]}; top-2 gap "
                    f"there {gap[at]:.3g} (inside: {ref_gap:.3g}); smallest gap before "
                    f"{min(gap[:at], default=float('nan')):.3g}"
                )


if __name__ == "__main__":
    main()
