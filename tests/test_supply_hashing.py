"""Hashing streams: flat memory on a 3 GB model, digests equal hashlib's, OMS order."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from granite_ops_kit.supply import hashing, model_files

PROBE = """
import json, re, sys, threading, time
from pathlib import Path
from granite_ops_kit.supply import hashing, model_files
peak, done = {}, threading.Event()

def sample():  # resident memory by kind, sampled: anonymous (heap) and file-backed (maps)
    while not done.is_set():
        text = open("/proc/self/status").read()
        for kind in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            kb = int(re.search(kind + r":\\s+(\\d+)", text).group(1))
            peak[kind] = max(peak.get(kind, 0), kb // 1024)
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
files = model_files.list_files(Path(sys.argv[1]))
digests = hashing.hash_pieces(hashing.pieces(files, "files"), "sha256")
done.set()
print(json.dumps({"peak_mb": peak, "digests": digests}))
"""


@pytest.mark.slow
def test_three_gigabytes_hash_in_flat_memory(tmp_path):
    for i in range(2):  # sparse: 3 GB of model without 3 GB of disk writes
        with open(tmp_path / f"model-{i}.safetensors", "wb") as f:
            f.truncate(1_500_000_000)
    (tmp_path / "config.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout)
    zeros = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(1_500_000_000 // len(block)):
        zeros.update(block)
    zeros.update(bytes(1_500_000_000 % len(block)))
    assert result["digests"]["model-0.safetensors"] == zeros.hexdigest()
    assert result["peak_mb"]["VmRSS"] < 200, result["peak_mb"]


def test_digests_match_hashlib_and_blake3_for_files_and_shards(tmp_path):
    import blake3

    data = os.urandom(3 * hashing.WINDOW_BYTES // 2 + 12_345)  # crosses a window boundary
    (tmp_path / "w.safetensors").write_bytes(data)
    files = model_files.list_files(tmp_path)
    for name, new in (
        ("sha256", hashlib.sha256),
        ("blake2b", hashlib.blake2b),
        ("blake3", blake3.blake3),
    ):
        got = hashing.hash_pieces(hashing.pieces(files, "files"), name)
        assert got == {"w.safetensors": new(data).hexdigest()}
    shard = 10_000_003  # not a multiple of the page size: maps must realign
    got = hashing.hash_pieces(hashing.pieces(files, "shards", shard), "sha256")
    expected = {
        f"w.safetensors:{s}:{min(s + shard, len(data))}": hashlib.sha256(
            data[s : s + shard]
        ).hexdigest()
        for s in range(0, len(data), shard)
    }
    assert got == expected and list(got) == list(expected)


def test_resource_order_is_by_component(tmp_path):
    for name in ("a.txt", "a-b/x", "a/b", "A", "b/c/d"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    names = [f.name for f in model_files.list_files(tmp_path)]
    assert names == ["A", "a/b", "a-b/x", "a.txt", "b/c/d"]
    assert sorted(names) != names  # plain string order would differ
