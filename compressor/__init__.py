"""ctxgate's compression engine: a library that knows nothing about HTTP.

    from compressor import Compressor
    result = Compressor().compress(context=docs, question="...", rate=0.25)

``Compressor.compress`` is the one entry point; everything else here is types and helpers.
"""

from ._cache import CompressionCache, MemoryCache, SQLiteCache, cache_key
from ._cache_redis import RedisCache
from ._compressor import Compressor, compress
from ._files import private, private_dir
from ._errors import ChecksumMismatch, ConfigError, CtxgateError, InputTooLarge, InvalidRequest, ModelError, ModelNotPrepared
from ._markup import has_markup, parse_markup, strip_markup
from ._protect import find_protected
from ._tokens import TokenCounter, get_counter
from ._types import CompressRequest, CompressResult, Document, DocumentResult
from .methods import METHOD_NAMES, METHODS

__all__ = [
    "METHODS", "METHOD_NAMES", "ChecksumMismatch", "CompressRequest", "ConfigError", "CompressResult", "CompressionCache",
    "Compressor", "CtxgateError", "Document", "DocumentResult", "InputTooLarge", "InvalidRequest",
    "MemoryCache", "ModelError", "ModelNotPrepared", "RedisCache", "SQLiteCache", "TokenCounter", "cache_key", "compress",
    "find_protected", "get_counter", "has_markup", "parse_markup", "private", "private_dir", "strip_markup",
]
