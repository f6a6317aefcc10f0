"""Device choices as plain functions of a device's properties, tested without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend

from anomdet.device import (
    CPU_BATCH_ROWS,
    CPU_BATCH_TOKENS,
    GPU_MAX_BATCH_ROWS,
    GPU_MAX_BATCH_TOKENS,
    BatchBudget,
    DeviceProfile,
    activation_bytes_per_token,
    attention_backends,
    batch_budget,
    describe,
    inference_dtype,
)

GIB = 1 << 30
MINILM = {"hidden_size": 384, "intermediate_size": 1536}
CPU = DeviceProfile("cpu", "some CPU")
H200 = DeviceProfile("cuda", "NVIDIA H200", free_memory=139 * GIB, bf16=True)


def test_a_cpu_keeps_the_budget_tuned_on_it() -> None:
    assert batch_budget(CPU, **MINILM) == BatchBudget(CPU_BATCH_TOKENS, CPU_BATCH_ROWS)
    assert (CPU_BATCH_TOKENS, CPU_BATCH_ROWS) == (512, 64)


def test_a_large_gpu_gets_the_largest_budget() -> None:
    assert batch_budget(H200, **MINILM) == BatchBudget(GPU_MAX_BATCH_TOKENS, GPU_MAX_BATCH_ROWS)


def test_a_gpu_budget_follows_its_free_memory() -> None:
    small = DeviceProfile("cuda", "small GPU", free_memory=1 * GIB, bf16=True)
    budget = batch_budget(small, **MINILM)
    per_token = activation_bytes_per_token(**MINILM)
    # The largest power of two whose activations fit in a quarter of the free memory.
    assert budget.tokens * per_token <= GIB // 4 < 2 * budget.tokens * per_token
    assert budget.tokens & (budget.tokens - 1) == 0
    assert budget.rows == budget.tokens // 32
    # A larger model gets fewer tokens from the same memory.
    assert batch_budget(small, hidden_size=1024, intermediate_size=4096).tokens < budget.tokens


def test_fp32_activations_halve_the_budget_of_a_gpu_without_bf16() -> None:
    with_bf16 = DeviceProfile("cuda", "gpu", free_memory=2 * GIB, bf16=True)
    without = DeviceProfile("cuda", "gpu", free_memory=2 * GIB, bf16=False)
    assert batch_budget(without, **MINILM).tokens * 2 == batch_budget(with_bf16, **MINILM).tokens


def test_a_nearly_full_gpu_never_goes_below_the_cpu_budget() -> None:
    full = DeviceProfile("cuda", "busy GPU", free_memory=1 << 20, bf16=True)
    assert batch_budget(full, **MINILM) == BatchBudget(CPU_BATCH_TOKENS, CPU_BATCH_ROWS)


@pytest.mark.parametrize("profile", [CPU, H200])
def test_settings_override_the_devices_figures(profile: DeviceProfile) -> None:
    assert batch_budget(profile, **MINILM, tokens=2048, rows=16) == BatchBudget(2048, 16)
    assert batch_budget(profile, **MINILM, rows=16).tokens == batch_budget(profile,
                                                                           **MINILM).tokens


def test_weights_score_in_bf16_only_on_a_gpu_that_has_it() -> None:
    assert inference_dtype(CPU) == torch.float32
    assert inference_dtype(H200) == torch.bfloat16
    assert inference_dtype(DeviceProfile("cuda", "old GPU", GIB, bf16=False)) == torch.float32


def test_the_cpu_describes_itself_by_name() -> None:
    profile = describe(torch.device("cpu"))
    assert profile.type == "cpu" and profile.name and not profile.bf16


def test_gpus_attend_without_cudnn_and_cpus_keep_torchs_choice() -> None:
    assert attention_backends(CPU) is None
    backends = attention_backends(H200)
    assert backends is not None and SDPBackend.CUDNN_ATTENTION not in backends
    # Flash attention where there is no padding, the memory-efficient kernel where there is.
    assert backends[:2] == [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
