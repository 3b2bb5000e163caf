"""Continuous batching over fixed cache pools.

Each step decodes every running stream's next token (a CUDA graph on a GPU). With one GPU
and a graph for every chunk, prompts run beside the steps on a stream of their own through
chunk graphs (engine/prefill_stream.py; `prefill_beside_decode=False` turns it off); else
inside the steps, as chunks within a token budget (engine/scheduler.py): a chunk graph
each, or, where a chunk has none, one packed forward with the decode tokens
(engine/batch.py). Either way a long prompt never stalls the running streams for more than
one chunk's share of a step.

A step launches its GPU work, then reports the last step's tokens (text, stop strings, the
stream callbacks) while the GPU computes, and only then samples: for 64 streams the host's
per-token work takes as long as a decode step and no longer adds to it. A stop string found
that late ends its sequence after the next step was launched, whose token is then dropped.

Requests join and leave between steps. Admission control: a prompt that can never fit is
refused at submit time (413); when every slot is busy, requests wait, and past
`max_waiting` new ones are refused (429), so overload never turns into an out-of-memory
crash.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

import torch

from granite_runtime.engine import graphs, output, scheduler, startup
from granite_runtime.engine.batch import Batch
from granite_runtime.engine.cache import HybridCache
from granite_runtime.engine.sampling import SamplingParams, sample, top_logprobs
from granite_runtime.engine.sequence import Sequence, Status, TokenEvent
from granite_runtime.engine.tokenizer import TextCodec
from granite_runtime.kernels.cpu.prepare import prepare_for_cpu
from granite_runtime.model.granite import GraniteForCausalLM
from granite_runtime.parallel import tp
from granite_runtime.spec.errors import RequestError
from granite_runtime.spec.memory import PREFILL_CHUNK


class Engine:
    def __init__(
        self,
        model: GraniteForCausalLM,
        codec: TextCodec,
        max_num_seqs: int = 8,
        max_model_len: int = 4096,
        prefill_chunk: int = PREFILL_CHUNK,
        max_waiting: int = 256,
        max_num_batched_tokens: int | None = None,
        prefill_beside_decode: bool = True,
    ):
        """`prefill_beside_decode`: prompts on a stream of their own (module docstring)."""
        self.model, self.codec = model, codec
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.prefill_chunk, self.max_waiting = prefill_chunk, max_waiting
        self.max_num_batched_tokens = max_num_batched_tokens or prefill_chunk
        weight = model.model.embed_tokens.weight
        self.device = weight.device
        if self.device.type == "cpu":
            self.cpu_path = prepare_for_cpu(model)  # C or oneDNN matvecs (bench/NOTES.md)
        graphed = self.device.type == "cuda" and os.environ.get("GKIT_CUDA_GRAPHS", "1") != "0"
        # the pad slot (the last one) is only needed where some batch sizes are padded
        pad_slot = max_num_seqs if graphed and max_num_seqs > graphs.MAX_GRAPHED_BATCH else None
        slots = max_num_seqs + (pad_slot is not None)
        self.cache = HybridCache(model.config, slots, max_model_len, weight.dtype, weight.device)
        largest = min(prefill_chunk, max_model_len)
        if self.device.type == "cuda":
            startup.warm_up_prefill(model, self.cache, largest)
        prep = startup.Prepared()
        if graphed:
            beside = prefill_beside_decode and tp.world_size() == 1
            prep = startup.capture_graphs(
                model, self.cache, max_num_seqs, largest, pad_slot, beside
            )
        self.graphs, self.chunk_graphs, self.prefill = prep.graphs, prep.chunk_graphs, prep.prefill
        self.free_slots = list(range(max_num_seqs))[::-1]
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping, self.accepting = False, True
        self._released = False  # the other ranks were told to stop
        self.stats = {"prompt_tokens": 0, "generation_tokens": 0, "steps": 0}
        self._grammars = self._masks = None
        self._unreported: list[tuple[Sequence, int, list]] = []  # the last step's tokens
        self.step_began: float | None = None  # when the loop's running step began, if one is

    # ---- submitting -------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event=None) -> Sequence:
        if not self.accepting:
            raise RequestError("the server is shutting down.", 503, "service_unavailable")
        if not prompt_ids:
            raise RequestError("the prompt is empty.")
        if len(prompt_ids) >= self.max_model_len:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens; this server's context is "
                f"{self.max_model_len} tokens (--max-model-len).",
                413,
                "context_length_exceeded",
            )
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise RequestError(f"the prompt holds a token id outside 0..{vocab - 1}.")
        seq = Sequence(list(prompt_ids), params, on_event)
        if params.grammar is not None:
            seq.matcher = self.grammars.matcher(params.grammar)
        with self._lock:
            if len(self.waiting) >= self.max_waiting:
                busy = f"{len(self.waiting)} requests are already waiting; retry later."
                raise RequestError(busy, 429, "rate_limit_exceeded")
            self.waiting.append(seq)
            self._lock.notify()
        return seq

    @property
    def grammars(self):
        """The structured-output compiler, built on first use (~1 s for a 100k vocabulary)."""
        if self._grammars is None:
            from granite_runtime.engine.grammar import GrammarCompiler, MaskBuffer

            vocab = self.model.config.vocab_size
            stops = sorted(self.codec.stop_token_ids)
            self._grammars = GrammarCompiler(self.codec.tokenizer, vocab, stops)
            self._masks = MaskBuffer(self.max_num_seqs, vocab, self.device)
        return self._grammars

    # ---- one step ---------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._unreported)

    def stalled_for(self) -> float:
        """Seconds the loop's running step has taken, 0 between steps (work waiting for the
        loop to wake is no step): a hung GPU kernel grows it, and /health turns 503 on it."""
        began = self.step_began
        return 0.0 if began is None else time.monotonic() - began

    def _admit(self) -> None:
        with self._lock:
            while self.waiting and self.free_slots:
                seq = self.waiting.popleft()
                if seq.cancelled:
                    self._finish(seq, "cancelled")
                    continue
                seq.slot = self.free_slots.pop()
                seq.status = Status.RUNNING
                self._reset(seq.slot)
                self.running.append(seq)

    @torch.inference_mode()
    def step(self) -> None:
        if self.prefill is None:
            return self._step()
        with torch.cuda.stream(self.prefill.decode):
            return self._step()

    def _step(self) -> None:
        self._admit()
        for seq in [s for s in self.running if s.cancelled]:
            if not (self.prefill and self.prefill.holds(seq)):  # in flight: ends as it lands
                self._finish(seq, "cancelled")
        landed = self._land_and_queue_prompts()
        decoding = scheduler.decoding(self.running)
        beside = self.prefill.fits if self.prefill else lambda seq: False
        serial = [s for s in self.running if s.in_prefill and not beside(s)]
        left = self.max_num_batched_tokens - len(decoding)
        chunks = scheduler.chunks(serial, left, self.prefill_chunk)
        if chunks and self._graphed(chunks):
            launched = ([self._decode(decoding)] if decoding else []) + [
                self._prefill(seq, chunk) for seq, chunk in chunks
            ]
        elif chunks and (decoding or len(chunks) > 1):
            launched = self._packed_step(decoding, chunks)
        elif chunks:
            launched = [self._prefill(*chunks[0])]
        else:
            launched = [self._decode(decoding)] if decoding else []
        if not launched and not landed and self.prefill is not None:
            self.prefill.wait()  # nothing to decode: sleep until a prompt lands
        self._report_unreported()  # while the GPU runs this step
        for seqs, logits in [*launched, *landed]:
            self._accept(seqs, logits)
        self.stats["steps"] += 1 if launched else 0

    def _land_and_queue_prompts(self) -> list:
        """Beside the decode steps: the prompts whose prefill finished (their first tokens
        sampled together, after this step's), then new prompts queued while there is room."""
        if self.prefill is None:
            return []
        seqs, rows = [], []
        for seq, logits in self.prefill.landed():
            if seq.cancelled:
                self._finish(seq, "cancelled")
            else:
                seqs.append(seq)
                rows.append(logits)
        fresh = [s for s in self.running if s.in_prefill and s.prefilled == 0]
        for seq in self.prefill.enqueue([s for s in fresh if self.prefill.fits(s)]):
            self.stats["prompt_tokens"] += len(seq.prompt_ids)
        return [(seqs, torch.cat(rows))] if seqs else []

    def _graphed(self, chunks) -> bool:
        """Whether every chunk replays a chunk graph (then the decode tokens replay theirs):
        two graphs read the weights twice, but each is one launch where the packed forward
        is hundreds, and those launches, not the GPU, set an eager step's pace."""
        graphs = self.chunk_graphs  # beside the decode steps, they are the prefill stream's
        return (
            graphs is not None
            and self.prefill is None
            and all(graphs.size_for(seq.prefilled, len(chunk)) is not None for seq, chunk in chunks)
        )

    # A launch returns (the sequences taking a token, their logits) without waiting on the GPU.
    def _prefill(self, seq: Sequence, chunk: list[int]):
        tokens = torch.tensor([chunk], dtype=torch.long, device=self.device)
        logits = self._forward(tp.OP_FORWARD, tokens, [seq.slot], [seq.prefilled])
        return self._prefilled([(seq, chunk)], logits[:, -1])

    def _decode(self, seqs: list[Sequence]):
        tokens = torch.tensor(
            [[s.output_ids[-1]] for s in seqs], dtype=torch.long, device=self.device
        )
        slots, starts = [s.slot for s in seqs], [s.length for s in seqs]
        return seqs, self._forward(tp.OP_DECODE, tokens, slots, starts)[:, -1]

    def _packed_step(self, decoding: list[Sequence], chunks) -> list:
        """One forward for every decoding stream's next token and every chunk: the weights
        are read once for all of them (engine/batch.py `Batch.packed`)."""
        flat = [s.output_ids[-1] for s in decoding] + [t for _, chunk in chunks for t in chunk]
        tokens = torch.tensor([flat], dtype=torch.long, device=self.device)
        slots = [s.slot for s in decoding] + [seq.slot for seq, _ in chunks]
        starts = [s.length for s in decoding] + [seq.prefilled for seq, _ in chunks]
        lengths = [1] * len(decoding) + [len(chunk) for _, chunk in chunks]
        logits = self._forward(tp.OP_PACKED, tokens, slots, starts, lengths)[:, -1]
        split = len(decoding)
        return [(decoding, logits[:split]), self._prefilled(chunks, logits[split:])]

    def _prefilled(self, chunks, logits: torch.Tensor):
        """Count the chunks in; a prompt now complete samples its first token. Indexing
        by a list copies its logits: the chunk graphs share one logits buffer, which the
        step's next chunk overwrites before anything samples."""
        done = []
        for row, (seq, chunk) in enumerate(chunks):
            seq.prefilled += len(chunk)
            self.stats["prompt_tokens"] += len(chunk)
            if not seq.in_prefill:
                done.append(row)
        return [chunks[row][0] for row in done], logits[done]

    # ---- model calls (every rank makes the same ones under tensor parallelism) -----------
    def _forward(self, op: int, tokens, slots: list[int], starts: list[int], lengths=()):
        """Logits (rows, 1, vocab) of a decode step (OP_DECODE), a prompt chunk (OP_FORWARD),
        each graphed where captured, or a packed step (OP_PACKED, tokens (1, sum(lengths)))."""
        if tp.rank() == 0:
            tp.send_step(op, tokens, slots, starts, lengths)
        graphed = op == tp.OP_DECODE and self.graphs is not None
        if graphed and (logits := self.graphs(tokens, slots, starts)) is not None:
            return logits
        chunk = op == tp.OP_FORWARD and self.chunk_graphs is not None and len(slots) == 1
        chunk = chunk and self.prefill is None
        if chunk and (logits := self.chunk_graphs(tokens, slots[0], starts[0])) is not None:
            return logits
        if op == tp.OP_PACKED:
            batch = Batch.packed(slots, starts, lengths, self.device)
        else:
            batch = Batch.make(slots, starts, self.device)
        return self.model(tokens, batch, self.cache)

    def _reset(self, slot: int) -> None:
        if tp.rank() == 0:
            tp.send_control(tp.OP_RESET, slot, self.device)
        self.cache.reset(slot)

    def follow(self) -> None:
        """Ranks other than 0: make each model call rank 0 announces, until it stops."""
        with torch.inference_mode():
            while True:
                op, tokens, slots, starts, lengths = tp.receive_step(self.device)
                if op == tp.OP_STOP:
                    return
                if op == tp.OP_RESET:
                    self.cache.reset(slots[0])
                elif op in (tp.OP_FORWARD, tp.OP_DECODE, tp.OP_PACKED):
                    self._forward(op, tokens, slots, starts, lengths)

    def _constrain(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Forbid the tokens each constrained sequence's grammar rules out. Called before
        anything waits on `logits`, so on a GPU the masks are computed during the step."""
        rows = [row for row, s in enumerate(seqs) if s.matcher is not None]
        if not rows:
            return logits
        slots = [seqs[row].slot for row in rows]
        self._masks.fill([(seqs[row].slot, seqs[row].matcher) for row in rows])
        return self._masks.apply(logits, rows, slots)

    def _accept(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Sample (this waits for the step) and take each sequence's token; what it reads
        as is reported during the next step. A sequence a stop string ended meanwhile
        drops its token."""
        if not seqs:
            return
        logits = self._constrain(seqs, logits)
        chosen = sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
        now = time.monotonic()
        for row, (seq, token) in enumerate(zip(seqs, chosen, strict=True)):
            if seq.status is Status.FINISHED:
                continue
            seq.first_token_at = seq.first_token_at or now
            if seq.matcher is not None:
                seq.matcher.consume_token(token)  # the mask allowed only tokens it accepts
            seq.output_ids.append(token)
            seq.ending = output.finish_reason(seq, self.codec.stop_token_ids, self.max_model_len)
            self.stats["generation_tokens"] += 1
            lp = []
            if seq.params.logprobs is not None:
                lp = [top_logprobs(logits[row], token, seq.params.logprobs)]
                seq.logprobs += lp
            self._unreported.append((seq, token, lp))

    # ---- text and finishing -------------------------------------------------------------
    def _report_unreported(self) -> None:
        """The text each token of the last step adds, streamed; finished sequences end."""
        unreported, self._unreported = self._unreported, []
        for seq, token, lp in unreported:
            if seq.status is Status.FINISHED:
                continue  # cancelled or failed since
            delta, reason = output.next_text(seq, self.codec, seq.ending)
            if reason is not None:
                self._finish(seq, reason, TokenEvent(delta, [token], lp, reason))
            elif seq.on_event:
                seq.on_event(seq, TokenEvent(delta, [token], lp))

    def _finish(self, seq: Sequence, reason: str, event: TokenEvent | None = None) -> None:
        seq.finish_reason, seq.status = reason, Status.FINISHED
        with self._lock:
            if seq in self.running:
                self.running.remove(seq)
                self.free_slots.append(seq.slot)
            self._lock.notify_all()
        if seq.on_event:
            seq.on_event(seq, event or TokenEvent("", [], [], reason))

    # ---- the loop -----------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        """Run one request to completion on the calling thread (CLI, tests)."""
        seq = self.submit(prompt_ids, params)
        while seq.status is not Status.FINISHED:
            self.step()
        return seq

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gkit-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self.has_work() and not self._stopping:
                    if not self._lock.wait(timeout=tp.KEEPALIVE_SECONDS) and tp.world_size() > 1:
                        tp.send_control(tp.OP_KEEPALIVE, 0, self.device)
                if self._stopping and not self.has_work():
                    return
            self.step_began = time.monotonic()
            try:
                self.step()
            except Exception as bad:  # fail the requests, keep serving
                self._fail_all(f"internal error in the engine: {bad}")
            self.step_began = None

    def _fail_all(self, message: str) -> None:
        self._unreported = []
        if self.prefill is not None:
            self.prefill.drain()  # their slots are freed below: nothing may still write them
        for seq in list(self.running) + list(self.waiting):
            with self._lock:
                if seq in self.waiting:
                    self.waiting.remove(seq)
            self._finish(seq, "error", TokenEvent("", [], [], "error", message))

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, let running requests finish, then end the loop (and release the
        other ranks' `follow`)."""
        self.accepting = False
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread:
            self._thread.join(timeout)
        if tp.world_size() > 1 and not self._released:
            self._released = True
            tp.send_control(tp.OP_STOP, 0, self.device)

    def cache_usage(self) -> float:
        """Fraction of KV token capacity held by running sequences."""
        used = sum(s.length for s in self.running)
        return used / (self.max_num_seqs * self.max_model_len)
