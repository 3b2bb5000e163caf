"""`gkit size`: the memory model against REFERENCE.md's numbers, the engines' rules, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from granite_ops_kit import catalog
from granite_ops_kit.sizing import engines
from granite_ops_kit.sizing.engines import Workload
from granite_ops_kit.sizing.gpus import CATALOG, find_gpu
from granite_ops_kit.sizing.plan import Request, make_plan
from granite_ops_kit.sizing.source import resolve
from granite_runtime.spec import memory
from granite_runtime.spec.config import GraniteConfig
from tests.conftest import run_gkit

MIB = 2**20
# REFERENCE.md section 2 (KV bytes/token, state MiB/sequence, twin KV bytes/token) and
# section 1 (parameters, billions).
REFERENCE = {
    "granite-4.0-h-small": (16384, 73.7, 163840, 32.21),
    "granite-4.0-h-tiny": (8192, 27.7, 81920, 6.94),
    "granite-4.0-h-1b": (8192, 27.7, 81920, 1.46),
    "granite-4.0-h-micro": (8192, 36.9, 81920, 3.19),
    "granite-4.0-h-350m": (4096, 10.8, 32768, 0.34),
    "granite-4.0-micro": (81920, 0.0, 81920, 3.40),
}


def _config(name: str) -> GraniteConfig:
    return GraniteConfig.from_dict(catalog.load_config(name))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_memory_model_matches_reference(name):
    kv, state_mib, twin_kv, billions = REFERENCE[name]
    c = _config(name)
    assert memory.kv_bytes_per_token(c) == kv
    assert round(memory.state_bytes_per_sequence(c) / MIB, 1) == state_mib
    twin = GraniteConfig.from_dict(
        {**catalog.load_config(name), "layer_types": ["attention"] * c.num_layers}
    )
    assert memory.kv_bytes_per_token(twin) == twin_kv
    assert round(memory.parameter_count(c) / 1e9, 2) == billions


def test_active_parameters_of_the_moe_models():
    assert round(memory.parameter_count(_config("granite-4.0-h-small"), True) / 1e9, 2) == 8.80
    assert round(memory.parameter_count(_config("granite-4.0-h-tiny"), True) / 1e9, 2) == 1.47


@pytest.mark.parametrize(
    "name,bf16,fp32",
    [
        ("granite-4.0-h-small", 528, 1040),
        ("granite-4.0-h-micro", 528, 1040),
        ("granite-4.0-h-tiny", 400, 784),
        ("granite-4.0-h-1b", 400, 784),
        ("granite-4.0-h-350m", 400, 784),
    ],
)
def test_vllm_block_sizes(name, bf16, fp32):
    c = _config(name)
    assert engines.vllm_layout(c, Workload(4096, 1))["block_size"] == bf16
    assert engines.vllm_layout(c, Workload(4096, 1, state_dtype="float32"))["block_size"] == fp32
    assert engines.vllm_layout(c, Workload(4096, 1))["mamba_groups"] == math_ceil(
        len(c.mamba_layers), 4
    )


def math_ceil(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize(
    "context,sessions,low,high",
    [(131072, 8, 0.83, 0.84), (32768, 8, 0.682, 0.692), (4096, 1, 0.09, 0.11)],
)
def test_hybrid_against_dense_sibling(context, sessions, low, high):
    plan = make_plan(
        Request(
            resolve("granite-4.0-h-micro"),
            find_gpu("h100-80gb"),
            1,
            "gkit",
            Workload(context, sessions),
        )
    )
    cmp = plan.comparison
    assert cmp.against == "granite-4.0-micro"
    assert low <= cmp.less_memory_with_weights <= high
    assert "70%" in cmp.ibm_claim


def test_gkit_pools_are_what_the_runtime_allocates(tiny_hybrid):
    torch = pytest.importorskip("torch")
    from granite_runtime.engine.cache import HybridCache

    c = GraniteConfig.from_file(tiny_hybrid / "config.json")
    f = engines.gkit(c, Workload(300, 5), 1)
    cache = HybridCache(c, 5, 300, torch.bfloat16, "cpu")
    assert cache.nbytes() == f.kv_cache + f.state_cache


def test_tensor_parallel_halves_the_sharded_parts():
    c = _config("granite-4.0-h-small")
    one, two = (memory.weight_bytes_per_gpu(c, 16, tp) for tp in (1, 2))
    assert 0.5 < two / one < 0.502  # norms, router and the single B/C group are replicated
    assert memory.kv_bytes_per_token_per_gpu(c, "bf16", 2) == 8192
    assert memory.kv_bytes_per_token_per_gpu(_config("granite-4.0-h-tiny"), "bf16", 8) == 8192


def test_llama_cpp_keeps_state_in_fp32():
    c = _config("granite-4.0-h-micro")
    gk = engines.gkit(c, Workload(4096, 4), 1)
    ll = engines.llama_cpp(c, Workload(4096, 4, weights_dtype="gguf-q4_k_m"), 1)
    assert ll.state_cache == 2 * gk.state_cache
    assert ll.weights < gk.weights / 3 and ll.details["n_ctx"] == 4096 * 4


def test_vllm_refuses_more_sessions_than_its_mamba_blocks():
    plan = make_plan(Request(resolve("h-micro"), find_gpu("l4"), 1, "vllm", Workload(131072, 64)))
    assert plan.fits is False
    assert plan.per_gpu.details["max_num_seqs"] == plan.max_sessions_at_context < 64


def test_answers_are_consistent():
    plan = make_plan(
        Request(resolve("h-micro"), find_gpu("h100-80gb"), 1, "gkit", Workload(32768, 8))
    )
    assert plan.fits and plan.fewest_gpus == 1
    most = plan.max_sessions_at_context
    over = make_plan(
        Request(resolve("h-micro"), find_gpu("h100-80gb"), 1, "gkit", Workload(32768, most + 1))
    )
    assert not over.fits and over.max_sessions_at_context == most
    # Decode bound: weights + 8 x 32k tokens of KV + 8 states read and written, at 3,350 GB/s.
    bound = plan.decode_bound
    expected = 6_382_792_192 + 8 * 32768 * 8192 + 2 * 8 * 38_688_768
    assert bound.bytes_per_step_per_gpu == expected
    assert bound.tokens_per_s_per_session == pytest.approx(3350e9 / expected)
    assert bound.tokens_per_s_total == pytest.approx(8 * 3350e9 / expected)


def test_cli_json_for_h_small_on_two_h100s_without_torch():
    probe = (
        "import sys, json\nfrom granite_ops_kit.cli.app import main\n"
        "code = main(['size', 'granite-4.0-h-small', '--gpu', 'h100-80gb', '--gpus', '2',"
        " '--context', '131072', '--json'])\n"
        "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "TORCH False" in result.stderr
    plan = json.loads(result.stdout)
    assert plan["fits"] and plan["gpus"] == 2 and plan["fewest_gpus"] == 2
    assert plan["per_gpu"]["kv_cache"] == 8 * 131072 * 8192  # 16 KiB/token split over 2


def test_cli_plan_that_does_not_fit_exits_1_with_numbers():
    result = run_gkit("size", "granite-4.0-h-small", "--gpu", "l4", "--context", "131072")
    assert result.returncode == 1
    assert "need" in result.stderr and "the budget is" in result.stderr


def test_the_prefill_chunk_is_counted_and_bounded():
    """`--prefill-chunk` sizes the largest prefill workspace (the chunk graphs' and the eager
    chunk's); below 16 tokens it is a usage error, for `gkit size` and `gkit serve` alike,
    refused before any model is read."""
    gpu = find_gpu("h100-80gb")
    small, large = (
        make_plan(Request(resolve("h-micro"), gpu, 1, "gkit", Workload(32768, 8, prefill_chunk=n)))
        for n in (512, 2048)
    )
    assert small.per_gpu.details["prefill_chunk"] == 512
    assert large.per_gpu.activations > small.per_gpu.activations
    assert large.per_gpu.kv_cache == small.per_gpu.kv_cache
    assert large.to_json()["workload"]["prefill_chunk"] == 2048
    for command in (["size", "h-micro"], ["serve", "/nonexistent"]):
        result = run_gkit(*command, "--prefill-chunk", "8")
        assert result.returncode == 2 and "prefill-chunk" in result.stderr
        assert "Traceback" not in result.stderr


def test_cli_uneven_tensor_parallel_is_a_usage_error():
    result = run_gkit("size", "granite-4.0-h-small", "--gpus", "3")
    assert result.returncode == 2
    assert "cannot be split over 3 GPUs" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gpu", "tpu-v5"], "unknown GPU 'tpu-v5'"),
        (["--engine", "llama.cpp", "--weights-dtype", "fp8"], "not available with llama.cpp"),
        (["--kv-dtype", "int3"], "--kv-dtype must be one of"),
    ],
)
def test_cli_bad_flags(args, message):
    result = run_gkit("size", "h-micro", *args)
    assert result.returncode == 2 and message in result.stderr


def test_model_from_checkpoint_config_file_and_hub_cache(tiny_hybrid, tmp_path):
    assert resolve(str(tiny_hybrid)).source == "checkpoint"
    assert resolve(str(tiny_hybrid / "config.json")).source == "config"
    # A Hugging Face cache laid out as huggingface_hub writes it, used offline.
    snapshot = tmp_path / "hub" / "models--acme--granite-mini" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((tiny_hybrid / "config.json").read_text())
    refs = tmp_path / "hub" / "models--acme--granite-mini" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = run_gkit("size", "acme/granite-mini", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "hub"
    missing = run_gkit("size", "acme/not-cached", env=env)
    assert missing.returncode == 2 and "could not get config.json" in missing.stderr


def test_plot_and_sweep(tmp_path):
    png = tmp_path / "memory.png"
    result = run_gkit("size", "h-micro", "--plot", str(png), "--sweep", "--json")
    assert result.returncode == 0, result.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    sweep = json.loads(result.stdout)["sweep"]
    assert [row["gpu"] for row in sweep] == list(CATALOG)
    h100 = next(row for row in sweep if row["gpu"] == "h100-80gb")
    assert h100["4096"] > h100["32768"] > h100["131072"] > 0
