"""Device choices: where a model runs, in which dtype it scores, and how large its
inference batches are.

The choices are plain functions of a `DeviceProfile` (the device's type, name, free
memory and bf16 support), so that they are tested on a CPU; `describe` reads the
profile of the device at hand.
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# Inference batches on a CPU hold at most this many tokens (padding included) and texts:
# short texts go in wide batches, long ones in narrow ones. 512 was the fastest of
# 256-2048 on a 2-core AVX2 CPU for all-MiniLM-L6-v2 on SMS texts.
CPU_BATCH_TOKENS = 512
CPU_BATCH_ROWS = 64
# On a GPU a batch of 512 tokens leaves it idle between launches: on an H200, scoring
# SMS texts with the bundled model ran at 635 texts/s at 512 tokens, 3,332 at 8,192
# tokens and 256 rows, 5,611 at 32,768 and 1,024, and 7,033 at 131,072 and 4,096 (scores
# within 0.0007 of each other). Larger batches gain little more and only cost memory.
GPU_MAX_BATCH_TOKENS = 131_072
GPU_MAX_BATCH_ROWS = 4_096
# Rows grow with the token budget at one row per this many tokens (131,072 -> 4,096).
GPU_TOKENS_PER_ROW = 32
# Inference activations may take this share of the memory free on the device: the rest
# is left to the caching allocator's other blocks and to other processes on the GPU.
GPU_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class DeviceProfile:
    """What the choices in this module depend on."""

    type: str  # torch's device type: "cpu" or "cuda"
    name: str  # the GPU's or the CPU's model name, as printed beside benchmark ratios
    free_memory: int = 0  # bytes a batch may use (GPUs only)
    bf16: bool = False  # the device multiplies bf16 matrices natively


@dataclass(frozen=True)
class BatchBudget:
    """At most `tokens` padded tokens and `rows` texts per inference batch."""

    tokens: int
    rows: int


def pick_device() -> torch.device:
    """A GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def describe(device: torch.device) -> DeviceProfile:
    """The profile of `device` as it is now (free memory changes as models load)."""
    if device.type != "cuda":
        return DeviceProfile(device.type, cpu_name())
    index = device.index if device.index is not None else torch.cuda.current_device()
    free, _ = torch.cuda.mem_get_info(index)
    # Blocks this process's caching allocator holds but does not use are free to it too;
    # counting them keeps the budget the same from one call to the next.
    cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    return DeviceProfile("cuda", torch.cuda.get_device_name(index), free + cached,
                         torch.cuda.is_bf16_supported())


def inference_dtype(profile: DeviceProfile) -> torch.dtype:
    """The dtype a model's weights score in: bf16 on a GPU that multiplies it natively
    (twice the matrix rate of tf32, and half the bytes), else fp32."""
    return torch.bfloat16 if profile.type == "cuda" and profile.bf16 else torch.float32


def attention_backends(profile: DeviceProfile) -> list[SDPBackend] | None:
    """The SDPA kernels a model may attend with on this device; None leaves PyTorch's choice.

    On CUDA, not cuDNN's: PyTorch prefers it on Hopper GPUs, but builds a cuDNN graph for
    each new batch shape, and dynamic padding makes many shapes. A profile of 20 training
    steps on an H200 spent two thirds of the host's time there (6.6 ms per forward and
    7.8 ms per backward call, against 2.3 ms of GPU time per whole step). Flash attention
    (no padding mask) and the memory-efficient kernel (with one) have no such cost.
    """
    if profile.type != "cuda":
        return None
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_kernels(profile: DeviceProfile) -> contextlib.AbstractContextManager[None]:
    """A context in which SDPA uses only `attention_backends(profile)`."""
    backends = attention_backends(profile)
    return contextlib.nullcontext() if backends is None else sdpa_kernel(backends)


def activation_bytes_per_token(hidden_size: int, intermediate_size: int,
                               dtype_bytes: int = 2) -> int:
    """Bytes one token's activations take at the peak of one transformer layer in
    inference, twice over as a margin: the hidden state, the query, key and value
    projections, the attention output and the feed-forward layer's input and output
    (SDPA keeps no attention matrix)."""
    return 2 * dtype_bytes * (6 * hidden_size + 2 * intermediate_size)


def _floor_power_of_two(value: int) -> int:
    return 1 << max(0, int(value).bit_length() - 1)


def batch_budget(profile: DeviceProfile, *, hidden_size: int = 768,
                 intermediate_size: int = 3072, tokens: int | None = None,
                 rows: int | None = None) -> BatchBudget:
    """The inference batch budget for a model of these sizes on this device.

    A CPU gets `CPU_BATCH_TOKENS` and `CPU_BATCH_ROWS`. A GPU gets as many tokens as
    `GPU_MEMORY_SHARE` of its free memory holds (a power of two, at most
    `GPU_MAX_BATCH_TOKENS`, never below the CPU's budget) and one row per
    `GPU_TOKENS_PER_ROW` tokens. `tokens` and `rows`, when given (the settings'
    overrides), win over the device's figures.
    """
    if profile.type != "cuda":
        chosen = BatchBudget(CPU_BATCH_TOKENS, CPU_BATCH_ROWS)
    else:
        per_token = activation_bytes_per_token(hidden_size, intermediate_size,
                                               2 if profile.bf16 else 4)
        fits = int(profile.free_memory * GPU_MEMORY_SHARE) // per_token
        budget = max(CPU_BATCH_TOKENS, _floor_power_of_two(min(GPU_MAX_BATCH_TOKENS, fits)))
        chosen = BatchBudget(budget, min(GPU_MAX_BATCH_ROWS,
                                         max(CPU_BATCH_ROWS, budget // GPU_TOKENS_PER_ROW)))
    return BatchBudget(tokens or chosen.tokens, rows or chosen.rows)


def host_threads() -> int:
    """The cores this process may use (its affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_threads() -> int:
    """Use every core for intra-op parallelism (torch's default can undercount in
    containers), or the OMP_NUM_THREADS a process was given that shares the cores with
    others (a Dask worker among several)."""
    threads = host_threads()
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        threads = min(threads, int(given))
    torch.set_num_threads(threads)
    return threads
