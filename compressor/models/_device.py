"""Device and dtype choice: cuda when there is one, else cpu; bf16 only where it is fast.

On CPUs without native bf16 (no AVX512-BF16 or AMX), bf16 matmuls are emulated and measured
about 5x slower than fp32 on our 2-core AVX2 machines, so we load fp32 there.
Override with ``CTXGATE_DEVICE`` (cpu, cuda, cuda:1) and ``CTXGATE_DTYPE`` (fp32, bf16, fp16).
"""

from __future__ import annotations

import functools

from .._runtime import runtime

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device() -> str:
    chosen = runtime().device
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str):
    import torch

    chosen = runtime().dtype  # validated when the runtime was read
    if chosen:
        return getattr(torch, _DTYPES[chosen])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
