"""Tensor parallelism (tp.py) on the CPU: two real processes over gloo compute what one
computes. The same code runs over NCCL on GPUs (tests/test_runtime_gpu.py, on the device).

What differs between one and two ranks is only the order of additions in the all-reduced
sums, so fp32 logits agree to ~1e-6 and greedy tokens are identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from granite_ops_kit.demo.checkpoint import write_demo_model  # noqa: E402
from granite_runtime.engine.engine import Engine  # noqa: E402
from granite_runtime.engine.sampling import SamplingParams  # noqa: E402
from granite_runtime.engine.tokenizer import TextCodec  # noqa: E402
from granite_runtime.model.loader import load_model  # noqa: E402
from granite_runtime.parallel import tp  # noqa: E402
from granite_runtime.spec.config import GraniteConfig  # noqa: E402
from granite_runtime.spec.errors import ModelLoadError  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=0)
PROMPT = [(7 * i + 3) % 1000 for i in range(40)]

# Rank 0 in a subprocess: build the split service, prefill logits, then greedy generation
# of two requests through the engine, the second joining while the first decodes, so that
# plain prefill, packed (decode + chunk) and decode steps are all announced to the
# follower; then stop the follower.
TWO_RANKS = """
import json, sys, torch
from granite_runtime.parallel import tp
from granite_runtime.parallel.launch import start_engine
from tests.test_runtime_tp import GREEDY, generate_pair
path, prompt, device = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
engine = start_engine(path, device, "float32", max_num_seqs=2, max_model_len=96, gpus=2)
with torch.inference_mode():
    engine._reset(1)
    tokens = torch.tensor([prompt], device=engine.device)
    logits = engine._forward(tp.OP_FORWARD, tokens, [1], [0])[0, -1].cpu()
seqs = generate_pair(engine, prompt)
engine.stop()
print(json.dumps({"logits": logits.tolist(), "tokens": [t for s in seqs for t in s.output_ids],
                  "logprobs": [lp[0] for s in seqs for lp in s.logprobs]}))
"""


def generate_pair(engine: Engine, prompt: list[int]) -> list:
    """Greedy outputs of `prompt` and of its reverse, submitted two steps later."""
    first = engine.submit(prompt, GREEDY)
    engine.step()
    engine.step()
    second = engine.submit(prompt[::-1], GREEDY)
    engine.step()  # one packed step: the first's third token and the whole second prompt
    assert len(first.output_ids) == 3 and len(second.output_ids) == 1
    while not (first.finish_reason and second.finish_reason):
        engine.step()
    return [first, second]


@pytest.fixture(scope="module")
def grouped(tmp_path_factory) -> Path:
    """Two Mamba groups (split one per rank, local norm) where tiny-hybrid has one (kept
    whole, norm all-reduced); MoE and attention as tiny-hybrid."""
    return write_demo_model(
        tmp_path_factory.mktemp("tp") / "grouped",
        "tiny-hybrid",
        overrides={"mamba_n_groups": 2},
    ).path


def one_rank(path: Path, device: str = "cpu") -> dict:
    model = load_model(path, "float32", device)
    engine = Engine(model, TextCodec.from_dir(path), max_num_seqs=2, max_model_len=96)
    with torch.inference_mode():
        engine._reset(1)
        tokens = torch.tensor([PROMPT], device=device)
        logits = engine._forward(tp.OP_FORWARD, tokens, [1], [0])[0, -1].cpu()
    seqs = generate_pair(engine, PROMPT)
    return {
        "logits": logits,
        "tokens": [t for s in seqs for t in s.output_ids],
        "logprobs": [lp[0] for s in seqs for lp in s.logprobs],
    }


def two_ranks(path: Path, device: str = "cpu") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", TWO_RANKS, str(path), json.dumps(PROMPT), device],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["logits"] = torch.tensor(result["logits"])
    return result


@pytest.fixture(scope="module")
def biased(tmp_path_factory) -> Path:
    """One group and projection biases: the gated norm's sum of squares is all-reduced on
    its own (a bias does not commute with the norm's scale) and out_proj's bias is added
    by one rank only."""
    return write_demo_model(
        tmp_path_factory.mktemp("tp") / "biased",
        "tiny-hybrid",
        overrides={"mamba_proj_bias": True, "attention_bias": True},
    ).path


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_hybrid", "tiny_dense", "grouped", "biased"])
def test_two_ranks_compute_what_one_computes(fixture, request):
    path = request.getfixturevalue(fixture)
    assert_same(one_rank(path), two_ranks(path))


def assert_same(one: dict, two: dict) -> None:
    rel = ((two["logits"] - one["logits"]).norm() / one["logits"].norm()).item()
    assert rel < 1e-5, rel
    assert two["tokens"] == one["tokens"] and len(set(one["tokens"])) > 3
    assert max(abs(a - b) for a, b in zip(one["logprobs"], two["logprobs"], strict=True)) < 1e-4


def test_each_rank_holds_its_part(tiny_hybrid):
    """Rank 1 of 2 holds half of every split weight (and the caches sized from them)."""
    full = GraniteConfig.from_file(tiny_hybrid / "config.json")
    part = load_model(tiny_hybrid, "float32", "cpu", rank=1, world=2)
    whole = load_model(tiny_hybrid, "float32", "cpu")
    layer, ref = part.model.layers[0].mamba, whole.model.layers[0].mamba
    inner, gn = full.mamba_inner, full.mamba_groups * full.mamba_state
    assert layer.out_proj.weight.shape == (full.hidden_size, inner // 2)
    assert torch.equal(layer.out_proj.weight, ref.out_proj.weight[:, inner // 2 :])
    # one group: B and C stay whole on every rank, after rank 1's halves of z and x
    w = layer.in_proj.weight
    assert torch.equal(w[: inner // 2], ref.in_proj.weight[inner // 2 : inner])
    assert torch.equal(
        w[inner : inner + 2 * gn], ref.in_proj.weight[2 * inner : 2 * inner + 2 * gn]
    )
    assert part.config.mamba_norm_across_ranks and layer.norm.across_ranks
    assert layer.reduces_output  # one all-reduce carries out_proj and the norm (layers.py)
    attn = part.model.layers[2].self_attn
    assert attn.q_proj.weight.shape[0] == full.num_heads // 2 * full.head_dim
    moe = part.model.layers[0].block_sparse_moe
    assert moe.input_linear.weight.shape == (full.num_experts, full.expert_size, full.hidden_size)
    rows = full.vocab_size // 2
    assert torch.equal(part.lm_head.weight, whole.lm_head.weight[rows:])
    assert torch.equal(part.model.embed_tokens.weight, whole.model.embed_tokens.weight[rows:])


def test_a_model_that_does_not_split_is_refused_in_one_sentence(tiny_hybrid):
    full = GraniteConfig.from_file(tiny_hybrid / "config.json")
    with pytest.raises(
        ModelLoadError, match=r"the model.s 4 attention heads do not split evenly over 3 GPUs"
    ):
        tp.local_config(full, 3)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_gkit_serve_split_over_two_processes(tiny_hybrid):
    """`gkit serve --gpus 2` (here on the CPU): the same completion as one process, and
    SIGTERM ends the follower too."""
    from openai import OpenAI

    expected = Engine(
        load_model(tiny_hybrid, "float32", "cpu"), TextCodec.from_dir(tiny_hybrid), 2, 96
    ).generate(PROMPT, GREEDY)
    server = ServerProcess(
        tiny_hybrid, "--gpus", "2", "--dtype", "float32", "--max-model-len", "96"
    )
    try:
        followers = [p for p in _children(server.proc.pid) if _alive(p)]
        assert len(followers) >= 1, server.output()
        client = OpenAI(base_url=server.base + "/v1", api_key="x")
        done = client.completions.create(
            model="tiny-hybrid", prompt=PROMPT, max_tokens=24, temperature=0.0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert done.usage.completion_tokens == 24
        assert done.choices[0].text == expected.text
        assert "split over 2 processes" in server.output()
    finally:
        # uvicorn re-raises SIGTERM after its graceful shutdown: exit 128 + 15
        assert server.stop() in (0, 143)
    assert "Application shutdown complete" in Path(server.log.name).read_text()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in followers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in followers)


def test_gpus_without_a_gpu_is_refused_unless_cpu_is_asked_for(tiny_hybrid):
    """`--gpus 2` on a machine with no CUDA GPU (CI's) is a usage error, not a silent
    fall-back to CPU processes; `--device cpu` is how to ask for those."""
    from tests.conftest import run_gkit

    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this runs on the device machine too
    result = run_gkit("serve", str(tiny_hybrid), "--gpus", "2", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert "no CUDA GPU; pass --device cpu" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_followers_end_when_rank_0_is_killed(tiny_hybrid):
    """SIGKILL leaves no clean-up to rank 0: the follower notices its parent is gone."""
    server = ServerProcess(tiny_hybrid, "--gpus", "2", "--dtype", "float32")
    followers = [p for p in _children(server.proc.pid) if _alive(p)]
    assert followers, server.output()
    server.proc.kill()
    server.proc.wait(10)
    server.log.close()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in followers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in followers)


def test_a_follower_ends_when_its_parent_is_gone(tmp_path):
    """The watchdog itself (launch.exit_with_parent), where no broken connection would end
    the follower for it (NCCL waits): a grandchild runs it, its parent is SIGKILLed."""
    parent_code = (
        "import os, subprocess, sys, time\n"
        "code = 'from granite_runtime.parallel.launch import exit_with_parent; "
        "exit_with_parent(%d, 0.1)' % os.getpid()\n"
        "child = subprocess.Popen([sys.executable, '-c', code])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    assert _alive(child)  # the watchdog does not end a follower whose parent lives
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
