"""The knobs that give the decode steps a share of the GPU beside prompt chunks
(engine/prefill_share.py): read once, each bounded by the GPU's SM count, and a bad value is
one sentence naming the variable, which `gkit serve` reports as a usage error (exit 2)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from granite_ops_kit.errors import UsageError, runtime_errors
from granite_runtime.engine.prefill_share import (
    QUEUED_CHUNKS,
    PrefillShare,
    gemms_leaving_free,
    share_from_env,
)
from granite_runtime.spec.errors import SettingError


def test_no_knob_set_changes_nothing():
    assert share_from_env({}, 132) == PrefillShare(0, 0, QUEUED_CHUNKS)
    assert share_from_env({"GKIT_PREFILL_GREEN_SMS": " "}, 132).green_sms == 0


def test_each_knob_is_read_within_its_bounds():
    env = {
        "GKIT_PREFILL_FREE_SMS": "32",
        "GKIT_PREFILL_GREEN_SMS": "131",
        "GKIT_PREFILL_QUEUED_CHUNKS": "1",
    }
    assert share_from_env(env, 132) == PrefillShare(32, 131, 1)


@pytest.mark.parametrize(
    ("name", "value", "bounds"),
    [
        ("GKIT_PREFILL_GREEN_SMS", "132", "from 0 to 131"),  # would leave decode no SM
        ("GKIT_PREFILL_FREE_SMS", "-4", "from 0 to 131"),
        ("GKIT_PREFILL_FREE_SMS", "16.5", "from 0 to 131"),
        ("GKIT_PREFILL_QUEUED_CHUNKS", "0", "from 1 to 64"),  # nothing could ever be queued
        ("GKIT_PREFILL_QUEUED_CHUNKS", "many", "from 1 to 64"),
    ],
)
def test_a_bad_value_is_one_sentence_naming_the_variable(name, value, bounds):
    with pytest.raises(SettingError) as bad:
        share_from_env({name: value}, 132)
    message = str(bad.value)
    assert message == f"{name} is {value!r}; it takes a whole number {bounds}."
    with pytest.raises(UsageError) as usage, runtime_errors():
        share_from_env({name: value}, 132)
    assert str(usage.value) == message and usage.value.exit_code == 2


def test_no_sms_left_free_leaves_the_blas_settings_alone():
    import torch

    blas = torch.backends.cuda.preferred_blas_library()
    with gemms_leaving_free(0):
        assert torch._C._get_sm_carveout_experimental() is None
    assert torch.backends.cuda.preferred_blas_library() == blas


def test_sms_left_free_are_restored_after_a_failure():
    """Whatever fails inside (here a capture, or on a PyTorch without cuBLASLt the switch to
    it), the carve-out and the BLAS library are back as they were: the decode graphs
    captured later must keep every SM."""
    import torch

    blas = torch.backends.cuda.preferred_blas_library()
    with pytest.raises(RuntimeError), gemms_leaving_free(16):
        raise RuntimeError("capture failed")
    assert torch._C._get_sm_carveout_experimental() is None
    assert torch.backends.cuda.preferred_blas_library() == blas
