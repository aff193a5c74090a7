"""Device and dtype choice: cuda when there is one, else cpu; bf16 only where it is measured faster.

CPU bf16 pays off only with hardware that multiplies it fast. Measured on our 2-core VMs:
- AVX2 only (no bf16 instructions): bf16 is emulated, ``hybrid`` 83 input tok/s against 345 in fp32;
- Intel Xeon with AMX: bf16 faster (MiniLM 3x, Qwen-1.5B prefill about 4x);
- Intel Xeon with AVX512-BF16 but no AMX: fp32 is faster (``hybrid`` 600 tok/s against 389, MiniLM
  1.3x, Qwen-1.5B prefill 1.2-1.5x), so fp32 there;
- AMD EPYC with AVX512-BF16 (Zen 4): bf16, as measured in the benchmarks (fp32 not compared there).
Override with ``CTXGATE_DEVICE`` (cpu, cuda, cuda:1) and ``CTXGATE_DTYPE`` (fp32, bf16, fp16).
"""

from __future__ import annotations

import functools
import re

from .._runtime import runtime

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # precision -> torch dtype name


def bf16_is_fast(cpuinfo: str) -> bool:
    """Whether a CPU with this ``/proc/cpuinfo`` runs bf16 models faster than fp32 (see above)."""
    flags = set(re.findall(r"[a-z0-9_]+", " ".join(re.findall(r"^flags\s*:(.*)$", cpuinfo, re.M))))
    if "amx_bf16" in flags:
        return True
    return "avx512_bf16" in flags and "AuthenticAMD" in cpuinfo


@functools.cache
def cpu_prefers_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return bf16_is_fast(f.read())
    except OSError:
        return False


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
        return getattr(torch, DTYPE_NAMES[chosen])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_prefers_bf16() else torch.float32


def dtype_precision(device: str) -> str:
    """The LMs' dtype for ``device`` as a precision name (fp32, bf16, fp16)."""
    torch_name = str(pick_dtype(device)).removeprefix("torch.")
    return next(p for p, name in DTYPE_NAMES.items() if name == torch_name)
