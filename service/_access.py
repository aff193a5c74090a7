"""Who may reach what: the Host check (DNS rebinding) and the optional admin token.

A page on any website can make a browser send requests to ``http://127.0.0.1:8340`` through a DNS
name it controls (DNS rebinding); the browser then sends that name as ``Host``. Checking ``Host``
against the names the sidecar is meant to be reached by closes that hole. The admin routes
(``/metrics``, ``/v1/fidelity*``, ``/dashboard``) show traffic figures; with ``admin_token`` set they
need ``Authorization: Bearer <token>`` (the dashboard also takes ``?token=`` and passes it on).
"""

from __future__ import annotations

import hmac

from litestar import Request

ADMIN_PREFIXES = ("/metrics", "/v1/fidelity", "/dashboard")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(header: str | None) -> str | None:
    """The host part of a Host header, lower-cased, without the port; None when malformed."""
    if not header:
        return None
    h = header.strip().lower()
    if h.startswith("["):  # [::1]:8340
        end = h.find("]")
        return h[1:end] if end > 0 else None
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h or None


class Hosts:
    """``allowed_hosts`` entries: exact names, ``*.example.com`` suffixes, or ``*`` for any."""

    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.exact = {a.lower().strip("[]") for a in allowed if not a.startswith("*")}
        self.suffixes = tuple(a.lower()[1:] for a in allowed if a.startswith("*."))

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        name = host_name(header)
        if name is None:
            return False
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def admin_ok(request: Request, token: bytes) -> bool:
    """The request carries the admin token (constant-time comparison)."""
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.query_params.get("token", "")
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token)
