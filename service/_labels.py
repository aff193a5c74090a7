"""Client-chosen strings made safe to keep and to echo: model names and header values.

A request's ``model`` ends up in metric labels, the controller's state, the fidelity store and the
``x-ctxgate-tokenizer`` header. Unbounded, 2,000 distinct 100 KB names held 165 MB; CR, LF or NUL
in a header value broke the response. So every such string goes through here first.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL_CHARS = 128
MAX_HEADER_CHARS = 256
_UNSAFE_LABEL = re.compile(r"[^A-Za-z0-9._:/@+=-]")
_UNSAFE_HEADER = re.compile(r"[^\x20-\x7e]")


def model_label(value: object) -> str:
    """A model name as kept and counted: at most 128 characters of ``[A-Za-z0-9._:/@+=-]``.

    Other characters become ``_``; a longer name keeps its head plus a hash of the whole, so two
    long names stay apart. Non-strings are "" (the policy then treats the request as model-less)."""
    if not isinstance(value, str):
        return ""
    if len(value) <= MAX_LABEL_CHARS and _UNSAFE_LABEL.search(value) is None:
        return value
    clean = _UNSAFE_LABEL.sub("_", value[: MAX_LABEL_CHARS * 4])
    if len(value) <= MAX_LABEL_CHARS:
        return clean
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    return clean[: MAX_LABEL_CHARS - 13] + "~" + digest


def header_value(value: str) -> str:
    """Printable ASCII only (anything else becomes ``?``), at most 256 characters."""
    if len(value) > MAX_HEADER_CHARS:
        value = value[: MAX_HEADER_CHARS - 3] + "..."
    return _UNSAFE_HEADER.sub("?", value)
