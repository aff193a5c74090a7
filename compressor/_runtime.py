"""The process's runtime environment, read from ``CTXGATE_*`` variables once and validated.

Library code asks :func:`runtime` instead of reading ``os.environ`` where it happens to need a
value, so a bad value fails once, with a :class:`ConfigError` that names the variable, and a
program (or a test) can install another runtime with :func:`set_runtime` without touching the
environment. Service settings (ports, policy) are not here: they live in the sidecar's own
``Settings``, which reads ``CTXGATE_<FIELD>`` through its own loader.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._errors import ConfigError

DTYPES = ("fp32", "bf16", "fp16")
STUDENT_PRECISIONS = ("int8", *DTYPES)
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_TRUE = ("1", "true", "yes")


@dataclass(frozen=True, slots=True)
class Runtime:
    """Where state and models live, and which device and precision the models run in.

    ``None`` means "choose for this machine" (CUDA when there is one; bf16 on the CPUs where it is
    faster, else fp32; an int8 student and an int8 structured re-ranker on CPU).
    """

    home: Path  # writable state: segment cache, fidelity store, Hugging Face scratch
    models: Path  # prepared models; may be read-only and shared between processes
    device: str | None = None  # CTXGATE_DEVICE: "cpu", "cuda", "cuda:1", ...
    dtype: str | None = None  # CTXGATE_DTYPE: one of DTYPES, for the LM scorers
    student_precision: str | None = None  # CTXGATE_STUDENT_PRECISION: one of STUDENT_PRECISIONS
    rerank_precision: str | None = None  # CTXGATE_RERANK_PRECISION: one of STUDENT_PRECISIONS
    allow_hub: bool = False  # CTXGATE_ALLOW_HUB: let Hugging Face libraries reach the network
    data: Path | None = None  # CTXGATE_DATA: the evaluation data folder (eval and bench only)

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"CTXGATE_DTYPE must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        for variable, value in (
            ("CTXGATE_STUDENT_PRECISION", self.student_precision),
            ("CTXGATE_RERANK_PRECISION", self.rerank_precision),
        ):
            if value is not None and value not in STUDENT_PRECISIONS:
                raise ConfigError(f"{variable} must be one of {', '.join(STUDENT_PRECISIONS)}; got {value!r}")
        if self.device is not None and not (self.device == "cpu" or self.device.startswith(("cuda", "mps", "xpu"))):
            raise ConfigError(f"CTXGATE_DEVICE must be cpu, cuda, cuda:N, mps or xpu; got {self.device!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Runtime:
        """Read the ``CTXGATE_*`` variables of ``env`` (default: this process's environment)."""
        env = os.environ if env is None else env

        def text(name: str, lower: bool = False) -> str | None:
            value = env.get(name, "").strip()
            value = value.lower() if lower else value
            return _ALIASES.get(value, value) or None

        home = Path(text("CTXGATE_HOME") or Path.home() / ".cache" / "ctxgate").expanduser()
        models = text("CTXGATE_MODELS")
        data = text("CTXGATE_DATA")
        return cls(
            home=home,
            models=Path(models).expanduser() if models else home / "models",
            device=text("CTXGATE_DEVICE"),
            dtype=text("CTXGATE_DTYPE", lower=True),
            student_precision=text("CTXGATE_STUDENT_PRECISION", lower=True),
            rerank_precision=text("CTXGATE_RERANK_PRECISION", lower=True),
            allow_hub=(text("CTXGATE_ALLOW_HUB", lower=True) or "") in _TRUE,
            data=Path(data).expanduser() if data else None,
        )


_lock = threading.Lock()
_current: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime: read from the environment on first use, then kept."""
    global _current
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                _current = Runtime.from_env()
            current = _current
    return current


def set_runtime(value: Runtime | None) -> Runtime | None:
    """Install ``value`` as the process's runtime (``None``: read the environment again on next use).
    Returns the one it replaces. Models already loaded stay loaded; ``models.clear_loaded()``
    drops them."""
    global _current
    with _lock:
        previous, _current = _current, value
    return previous
