"""The engine's interface for ``ctxgate train`` (eval/train): what training a student needs and
inference shares. Training code imports these from here, never from the private modules, so the
student's input encoding and network are defined once, for both."""

from ._embed import Embedder
from ._student import TRAINED_PREFIXES, Encoded, Window, build_net, encode, trained_state, unit_means
from ._tokens import get_counter
from ._units import Segmented, segment
from .methods.hybrid import Hybrid
from .models._prepare import sha256_file

__all__ = [
    "TRAINED_PREFIXES",
    "Embedder",
    "Encoded",
    "Hybrid",
    "Segmented",
    "Window",
    "build_net",
    "encode",
    "get_counter",
    "segment",
    "sha256_file",
    "trained_state",
    "unit_means",
]
