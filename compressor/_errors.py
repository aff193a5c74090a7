"""Errors a user can act on. Each message is one line that says what to do next."""

from __future__ import annotations


class CtxgateError(Exception):
    """Base class: anything raised on purpose by ctxgate. The CLI prints it without a traceback."""


class InvalidRequest(CtxgateError, ValueError):
    """The request itself is wrong (bad rate, unknown method, bad markup...)."""


class InputTooLarge(InvalidRequest):
    """The input is over the configured token limit (``max_input_tokens``)."""


class ConfigError(CtxgateError):
    """A setting is wrong (a config file, an env var, a flag): the operator's error, not a request's."""


class ModelError(CtxgateError):
    """A model could not be found, verified or loaded."""


class ModelNotPrepared(ModelError):
    """An embedded model is known but has not been prepared into the cache yet."""


class ChecksumMismatch(ModelError):
    """The joined model file does not match its pinned SHA-256; nothing was used."""
