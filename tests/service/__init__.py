"""The sidecar (ctxgate.service): proxy routes, errors, cache, hardening, real SDKs."""
