"""The real server and engine loop over a fake GPU (`serve_bench.py --fake-step-ms`): what
the server itself costs, on any machine.

The demo model is served on the CPU with every model call replaced by time on a fake device
clock. As on a GPU, a launch returns at once and its work queues; sampling waits (a sleep,
the GIL released, as a CUDA sync leaves it) until what was launched is done. A decode step
takes a fixed time, a prompt its tokens at a fixed prefill rate.

Prompts inside the decode steps (the default) add their time to the step that runs them.
`--fake-beside SLOWDOWN` runs them instead through a fake of engine/prefill_stream.py: on a
clock of their own, grouped into shared replays as on a GPU (`share_replays`), landing
when their time is up; a decode step launched while prompts are in flight takes SLOWDOWN
times as long (an H100 measured ~2.15x beside 2,048-token chunks: bench/NOTES.md round 19).
So a watched stream's ITL beside prefill should read SLOWDOWN x its idle ITL: whatever it
reads above that is the host's doing (server, engine loop, the GIL), not the GPU's.

Run: python bench/fake_gpu.py MODEL PORT SLOTS MAX_LEN STEP_MS CHUNK SLOWDOWN PREFILL_TOK_S
(serve_bench starts it; SLOWDOWN 0 keeps prompts inside the steps).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "runtime"), str(HERE.parent)]

import torch  # noqa: E402

from granite_runtime.engine import engine  # noqa: E402
from granite_runtime.engine.chunk_graphs import chunk_lengths, row_counts  # noqa: E402
from granite_runtime.engine.prefill_share import QUEUED_CHUNKS  # noqa: E402
from granite_runtime.engine.prefill_stream import (  # noqa: E402
    share_replays,
    within_room,
)
from granite_runtime.engine.scheduler import MIN_PREFILL_TOKENS  # noqa: E402


class FakeDevice:
    """Two queues of work, as two CUDA streams: the decode steps' and the prompts'."""

    def __init__(self, step_s: float, prefill_tok_s: float, slowdown: float):
        self.step_s, self.prefill_tok_s, self.slowdown = step_s, prefill_tok_s, slowdown
        self.decode_done = 0.0  # when the decode queue's launched work ends
        self.prefill_done = 0.0

    def launch(self, op: int, tokens: torch.Tensor) -> None:
        now = time.monotonic()
        if op == engine.tp.OP_DECODE:
            beside = self.prefill_done > now
            cost = self.step_s * (self.slowdown if beside else 1.0)
        else:  # a chunk or a packed step inside the decode steps: its tokens' time
            cost = tokens.numel() / self.prefill_tok_s
        self.decode_done = max(self.decode_done, now) + cost

    def queue_prompts(self, tokens: int) -> float:
        """Queue prompt work on the prefill queue; when it will be done."""
        self.prefill_done = max(self.prefill_done, time.monotonic()) + tokens / self.prefill_tok_s
        return self.prefill_done

    def wait_decode(self) -> None:
        time.sleep(max(0.0, self.decode_done - time.monotonic()))


class FakePrefillStream:
    """engine/prefill_stream.PrefillStream's interface over FakeDevice: the same room
    (QUEUED_CHUNKS chunks), the same grouping into shared replays, landing in order."""

    decode = None  # Engine.step enters torch.cuda.stream(None), which does nothing

    def __init__(self, device: FakeDevice, chunk: int, max_len: int, vocab: int):
        self.device, self.max_len, self.vocab = device, max_len, vocab
        self.limit = QUEUED_CHUNKS * chunk
        self.rows = row_counts(chunk_lengths(MIN_PREFILL_TOKENS, chunk), chunk)
        self.in_flight: deque[tuple[list, float]] = deque()
        self.queued = 0

    def fits(self, seq) -> bool:
        return len(seq.prompt_ids) < self.max_len

    def holds(self, seq) -> bool:
        return any(s is seq for group, _ in self.in_flight for s in group)

    def rows_for(self, n: int) -> tuple[int, int] | None:
        fits = [s for s in self.rows if s >= n]
        return (min(fits), self.rows[min(fits)]) if fits else None

    def enqueue(self, seqs: list) -> list:
        taken = within_room(seqs, self.queued, self.limit)
        for group in share_replays(taken, self.rows_for):
            shared = self.rows_for(len(group[0].prompt_ids)) if len(group) > 1 else None
            work = shared[0] * len(group) if shared else len(group[0].prompt_ids)
            for seq in group:
                seq.prefilled = len(seq.prompt_ids)
            self.in_flight.append((group, self.device.queue_prompts(work)))
        self.queued += sum(len(seq.prompt_ids) for seq in taken)
        return taken

    def landed(self) -> list:
        done, now = [], time.monotonic()
        while self.in_flight and self.in_flight[0][1] <= now:
            group, _ = self.in_flight.popleft()
            for seq in group:
                self.queued -= len(seq.prompt_ids)
                done.append((seq, torch.zeros(1, self.vocab)))
        return done

    def wait(self) -> None:
        if self.in_flight:
            time.sleep(max(0.0, self.in_flight[0][1] - time.monotonic()))

    def drain(self) -> None:
        self.in_flight.clear()
        self.queued = 0


def serve(args: list[str]) -> None:
    path, port, slots, length = args[0], int(args[1]), int(args[2]), int(args[3])
    step_ms, chunk, slowdown, prefill_tok_s = map(float, args[4:8])
    device = FakeDevice(step_ms / 1e3, prefill_tok_s, slowdown)

    def forward(self, op, tokens, slots, starts, lengths=()):
        device.launch(op, tokens)
        return torch.zeros(len(slots), 1, self.model.config.vocab_size)

    sample = engine.sample

    def sample_when_done(*sampled):
        device.wait_decode()
        return sample(*sampled)

    engine.Engine._forward, engine.sample = forward, sample_when_done
    from granite_runtime.server.run import build_service, run_server

    service = build_service(
        path, "cpu", "float32", slots, length, served_name="bench", prefill_chunk=int(chunk)
    )
    if slowdown:
        vocab = service.engine.model.config.vocab_size
        service.engine.prefill = FakePrefillStream(device, int(chunk), length, vocab)
    run_server(service, "127.0.0.1", port)


if __name__ == "__main__":
    serve(sys.argv[1:])
