"""ctxgate's compression engine: a library that knows nothing about HTTP.

    from ctxgate.compressor import Compressor
    result = Compressor().compress(context=docs, question="...", rate=0.25)

``Compressor.compress`` is the one entry point; everything else here is types and helpers.
"""

from ._agreement import agreement, embedding_cosine, final_number, first_line, normalize_answer, token_f1
from ._cache import CompressionCache, MemoryCache, SQLiteCache, cache_key
from ._cache_redis import RedisCache
from ._compressor import DEFAULT_RATE, Compressor, compress, default_for
from ._errors import (
    ChecksumMismatch,
    ConfigError,
    CtxgateError,
    InputTooLarge,
    InvalidRequest,
    ModelError,
    ModelNotPrepared,
)
from ._files import private, private_dir
from ._markup import has_markup, parse_markup, strip_markup
from ._options import OPTIONS, checked_options
from ._protect import find_protected
from ._runtime import Runtime, runtime, set_runtime
from ._tokens import TokenCounter, get_counter
from ._types import CompressRequest, CompressResult, Document, DocumentResult
from .methods import METHOD_NAMES, METHODS
from .structured import kind_of as content_kind

__all__ = [
    "DEFAULT_RATE",
    "METHODS",
    "METHOD_NAMES",
    "ChecksumMismatch",
    "CompressRequest",
    "ConfigError",
    "CompressResult",
    "CompressionCache",
    "Compressor",
    "CtxgateError",
    "Document",
    "DocumentResult",
    "InputTooLarge",
    "InvalidRequest",
    "MemoryCache",
    "ModelError",
    "ModelNotPrepared",
    "RedisCache",
    "Runtime",
    "SQLiteCache",
    "TokenCounter",
    "cache_key",
    "compress",
    "agreement",
    "content_kind",
    "default_for",
    "embedding_cosine",
    "final_number",
    "find_protected",
    "checked_options",
    "OPTIONS",
    "first_line",
    "normalize_answer",
    "runtime",
    "set_runtime",
    "token_f1",
    "get_counter",
    "has_markup",
    "parse_markup",
    "private",
    "private_dir",
    "strip_markup",
]
