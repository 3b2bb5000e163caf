"""Loading checkpoints: both layer spellings, shards, dtypes, and one clear error per fault."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from granite_ops_kit.demo.checkpoint import write_demo_model
from granite_runtime.model.loader import load_model
from granite_runtime.spec.config import GraniteConfig
from granite_runtime.spec.errors import ModelLoadError
from tests.conftest import run_gkit


@pytest.fixture
def sharded(tmp_path):
    return write_demo_model(tmp_path / "sharded", "tiny-hybrid", max_shard_bytes=1_000_000).path


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_sharded_equals_single_file(sharded, tiny_hybrid):
    a, b = load_model(sharded, "float32"), load_model(tiny_hybrid, "float32")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_both_layer_spellings_give_the_same_model(tiny_hybrid, tmp_path):
    copy = tmp_path / "respelled"
    shutil.copytree(tiny_hybrid, copy)
    kinds = json.loads((copy / "config.json").read_text())["layer_types"]
    _edit_config(
        copy,
        layer_types=[
            {"mamba": "linear_attention", "attention": "full_attention"}[k] for k in kinds
        ],
    )
    assert GraniteConfig.from_file(copy / "config.json").layer_types == tuple(kinds)
    x = torch.tensor([[1, 2, 3, 4, 5]])
    from granite_runtime.engine.batch import Batch
    from granite_runtime.engine.cache import HybridCache

    outs = []
    for path in (tiny_hybrid, copy):
        model = load_model(path, "float32")
        cache = HybridCache(model.config, 1, 8, torch.float32, "cpu")
        outs.append(model(x, Batch.make([0], [0], "cpu"), cache, all_logits=True))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize(
    "dtype,expected",
    [
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        (None, torch.bfloat16),
    ],
)
def test_dtypes(tiny_dense, dtype, expected):
    assert load_model(tiny_dense, dtype).lm_head.weight.dtype == expected


def test_tied_embeddings_share_the_head(tmp_path):
    path = write_demo_model(
        tmp_path / "tied", "tiny-dense", overrides={"tie_word_embeddings": True}
    ).path
    model = load_model(path, "float32")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_missing_shard(sharded):
    (sharded / "model-00002-of-00007.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"shard model-00002-of-00007\.safetensors named in"):
        load_model(sharded)


def test_shape_mismatch(tiny_hybrid, tmp_path):
    copy = tmp_path / "mismatch"
    shutil.copytree(tiny_hybrid, copy)
    _edit_config(copy, shared_intermediate_size=96)
    with pytest.raises(
        ModelLoadError,
        match=r"shared_mlp.input_linear.weight has shape "
        r"\(256, 128\), the config implies \(192, 128\)",
    ):
        load_model(copy)


def test_unknown_model_type(tiny_hybrid, tmp_path):
    copy = tmp_path / "llama"
    shutil.copytree(tiny_hybrid, copy)
    _edit_config(copy, model_type="llama")
    with pytest.raises(ModelLoadError, match=r"model_type 'llama' is not a Granite 4\.0 model"):
        load_model(copy)


def test_pickle_only_checkpoint_is_refused_without_loading(tiny_hybrid, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(tiny_hybrid, copy)
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(ModelLoadError, match=r"only pickle weights \(pytorch_model\.bin"):
        load_model(copy)


def test_index_pointing_outside_the_directory_is_refused(sharded, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(sharded / "model-00001-of-00007.safetensors", outside)
    os.symlink(outside, sharded / "link.safetensors")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "link.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="points outside the model directory"):
        load_model(sharded)
    index["weight_map"][first] = "../elsewhere.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="points outside the model directory"):
        load_model(sharded)


def test_truncated_weights_file(tiny_dense, tmp_path):
    copy = tmp_path / "truncated"
    shutil.copytree(tiny_dense, copy)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_model(copy)


def test_cli_reports_a_broken_model_in_one_sentence(tiny_hybrid, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(tiny_hybrid, copy)
    (copy / "config.json").write_text("{ not json")
    result = run_gkit("generate", str(copy), "--prompt", "hi")
    assert result.returncode == 1
    assert "config.json: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_generate_json(tiny_hybrid):
    result = run_gkit(
        "generate", str(tiny_hybrid), "--prompt", "Hello", "--max-tokens", "5", "--json"
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["usage"]["completion_tokens"] <= 5 and payload["finish_reason"]


def test_serve_on_a_port_in_use_exits_2_before_loading(tiny_hybrid):
    import socket
    import time

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        started = time.monotonic()
        r = run_gkit("serve", str(tiny_hybrid), "--port", str(port), "--device", "cpu")
        elapsed = time.monotonic() - started
    assert r.returncode == 2, r.stderr
    assert f"port {port} on 127.0.0.1 is already in use by " in r.stderr
    assert f"(pid {os.getpid()})" in r.stderr  # this test process holds it
    assert "serving" not in r.stderr and elapsed < 10


def test_serve_says_where_prompts_run_and_the_cpu_runs_them_inside(tiny_hybrid):
    """Prompts beside the decode steps need a CUDA stream: on the CPU the default
    (--prefill-beside) serves them inside the steps, and the start line says so."""
    from tests.server_process import ServerProcess

    for flags in ((), ("--prefill-inside",)):
        server = ServerProcess(tiny_hybrid, *flags)
        try:
            assert "prompts inside the decode steps)" in server.output()
        finally:
            server.stop()
