"""Resolve a model name (embedded name or role, local path, or HF id) and load it once per process."""

from __future__ import annotations

import functools
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from .._errors import ChecksumMismatch, ConfigError, ModelError, ModelNotPrepared
from .._runtime import runtime
from ._cache import model_dir, offline_env
from ._device import DTYPE_NAMES, dtype_precision, pick_device, pick_dtype
from ._prepare import is_prepared, read_manifest
from ._registry import lookup

_load_lock = threading.RLock()


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for, normalised
    location: str  # a local folder or an HF id
    fingerprint: str  # stable id of the weights, for cache keys


def resolve(name: str) -> ResolvedModel:
    """Map a name to something ``from_pretrained`` can load, or raise one clear line."""
    offline_env()
    spec = lookup(name)
    if spec is not None:
        if not is_prepared(spec):
            raise ModelNotPrepared(f"model {spec.name!r} is not prepared; run: ctxgate models prepare {spec.name}")
        return ResolvedModel(spec.name, str(model_dir(spec.name)), spec.sha256[:16])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a model folder (no config.json)")
        return ResolvedModel(str(path), str(path), _folder_fingerprint(path))
    if "/" in name and not name.startswith(("/", ".")):
        # an HF id: works where the Hub (or a warm HF cache) is reachable
        return ResolvedModel(name, name, hashlib.sha256(name.encode()).hexdigest()[:16])
    from ._registry import ALIASES, MODELS

    known = ", ".join(sorted({*MODELS, *ALIASES}))
    raise ModelError(f"unknown model {name!r}: use one of {known}, a local folder, or a Hugging Face id")


def _folder_fingerprint(path: Path) -> str:
    manifest = read_manifest(path.name) if path.parent == model_dir("x").parent else None
    if manifest:
        return manifest["sha256"][:16]
    h = hashlib.sha256()
    for f in sorted(path.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _hub_hint(exc: Exception, location: str) -> ModelError:
    return ModelError(
        f"could not load {location!r} ({type(exc).__name__}). If this is a Hugging Face id, the Hub must be "
        "reachable (set CTXGATE_ALLOW_HUB=1); otherwise use an embedded model (ctxgate models list) or a local folder"
    )


@functools.lru_cache(maxsize=16)
def _tokenizer(location: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location)
    except Exception as exc:  # transformers raises many kinds; turn them into one clear line
        raise _hub_hint(exc, location) from exc


def load_tokenizer(name: str):
    with _load_lock:
        return _tokenizer(resolve(name).location)


@functools.lru_cache(maxsize=8)
def _causal_lm(location: str, device: str, dtype_name: str):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=getattr(torch, dtype_name))
    except Exception as exc:
        raise _hub_hint(exc, location) from exc
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' .to stub is wrong for a str


def load_causal_lm(name: str, device: str | None = None):
    """(model, tokenizer, resolved) for a causal LM, cached per process."""
    resolved = resolve(name)
    device = device or pick_device()
    dtype = pick_dtype(device)
    with _load_lock:
        model = _causal_lm(resolved.location, device, str(dtype).removeprefix("torch."))
        tok = _tokenizer(resolved.location)
    return model, tok, resolved


@functools.lru_cache(maxsize=4)
def _embedder(location: str, device: str, precision: str):
    """In the LMs' dtype: bf16 MiniLM on an AMX CPU measured 3x faster than fp32 (2.8 s -> 0.95 s for
    120 NQ documents), rankings unchanged on the sample, similarities within 0.004. ``int8``: fp32
    weights with torch's dynamic int8 quantisation of the linear layers (CPU only)."""
    import torch
    from sentence_transformers import SentenceTransformer

    dtype = torch.float32 if precision == "int8" else getattr(torch, DTYPE_NAMES[precision])
    try:
        model = SentenceTransformer(location, device=device, model_kwargs={"dtype": dtype})
    except Exception as exc:
        raise _hub_hint(exc, location) from exc
    return _quantized(model) if precision == "int8" else model


def _quantized(model):
    import warnings

    import torch

    with warnings.catch_warnings():  # torch 2.13 marks eager quantisation as moving to torchao
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _precision(chosen: str | None, variable: str, device: str) -> str:
    """``chosen`` (validated when the runtime was read) or int8 on CPU, the LMs' dtype elsewhere."""
    if chosen:
        if chosen == "int8" and not device.startswith("cpu"):
            raise ConfigError(f"{variable}=int8 is CPU-only; the device is {device}")
        return chosen
    return "int8" if device.startswith("cpu") else dtype_precision(device)


def rerank_precision(device: str) -> str:
    """The embedder's precision for re-ranking structured items (records, lines, rows): int8 on CPU,
    where it measured 1.4-1.9x faster than fp32 on the Xeon VM with the same needed items kept on
    held-apart tool outputs; the LMs' dtype on GPUs. ``CTXGATE_RERANK_PRECISION`` overrides."""
    return _precision(runtime().rerank_precision, "CTXGATE_RERANK_PRECISION", device)


def load_embedder(name: str = "embedder", device: str | None = None, precision: str | None = None):
    """(SentenceTransformer, resolved), cached per process; ``precision`` defaults to the LMs' dtype."""
    resolved = resolve(name)
    device = device or pick_device()
    with _load_lock:
        return _embedder(resolved.location, device, precision or dtype_precision(device)), resolved


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class LoadedStudent:
    net: object  # compressor._student StudentNet, eval mode
    tokenizer: object
    max_len: int
    fingerprint: str  # SHA-256 prefix of the artifact: part of every cache key
    name: str
    precision: str  # int8 (dynamic, CPU), fp32, bf16 or fp16


def student_file(name: str) -> tuple[Path, str | None, int, int, str]:
    """(artifact path, pinned SHA-256 or None, layers, max_len, base) for a registry name or a
    ``.safetensors`` file from ``ctxgate train fit`` (its metadata gives layers and max_len)."""
    from ._registry import STUDENTS

    spec = STUDENTS.get(name.strip().lower())
    if spec is not None:
        return WEIGHTS_DIR / spec.file, spec.sha256, spec.layers, spec.max_len, spec.base
    path = Path(name).expanduser()
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        try:
            return path, None, int(meta["layers"]), int(meta["max_len"]), meta.get("base", "minilm")
        except (KeyError, ValueError):
            raise ModelError(
                f"{path} has no student metadata (layers, max_len); is it from `ctxgate train fit`?"
            ) from None
    raise ModelError(
        f"unknown student {name!r}: use {', '.join(sorted(STUDENTS))} or a .safetensors file from `ctxgate train fit`"
    )


def verify_student(name: str = "student") -> str:
    """The artifact's SHA-256; raises ChecksumMismatch when it differs from the pinned one."""
    from ._prepare import sha256_file

    path, pinned, *_ = student_file(name)
    if not path.is_file():
        raise ModelError(f"student artifact {path} is missing (it ships with the repo; reinstall ctxgate)")
    got = sha256_file(path)
    if pinned is not None and got != pinned:
        raise ChecksumMismatch(
            f"{path}: SHA-256 {got[:16]}... does not match the pinned {pinned[:16]}...; "
            "the file is damaged, or it was retrained without updating STUDENTS in the registry"
        )
    return got


@functools.lru_cache(maxsize=4)
def _student(name: str, device: str, precision: str) -> LoadedStudent:
    import torch
    from safetensors.torch import load_file

    from .._student import TRAINED_PREFIXES, build_net

    sha = verify_student(name)
    path, _pinned, layers, max_len, base = student_file(name)
    location = resolve(base).location
    net = build_net(location, layers)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    expected = {k for k in net.state_dict() if k.startswith(TRAINED_PREFIXES)}
    if set(state) != expected:
        raise ModelError(f"{path}: its tensors do not match a {layers}-block student of {base}")
    net.load_state_dict(state, strict=False)
    net.eval()
    if precision == "int8":
        net = _quantized(net)
    else:
        net = net.to(device=device, dtype=getattr(torch, DTYPE_NAMES[precision]))
    return LoadedStudent(net, _tokenizer(location), max_len, sha[:16], name, precision)


def student_precision(device: str) -> str:
    """int8 dynamic quantisation on CPU (fastest on every CPU kind measured, and the same numbers
    on all of them), the LMs' dtype on CUDA; ``CTXGATE_STUDENT_PRECISION`` overrides."""
    return _precision(runtime().student_precision, "CTXGATE_STUDENT_PRECISION", device)


def load_student(name: str = "student", device: str | None = None) -> LoadedStudent:
    """The student network, verified against its pin, cached per process."""
    device = device or pick_device()
    with _load_lock:
        return _student(name, device, student_precision(device))


def clear_loaded() -> None:
    """Drop every loaded model (tests and the `models` CLI use it)."""
    for fn in (_tokenizer, _causal_lm, _embedder, _student):
        fn.cache_clear()
