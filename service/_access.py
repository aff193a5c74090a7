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
    """The host part of a Host header, lower-cased, without the port; None when malformed (a port
    that is not a number from 1 to 65535 included: Starlette-style URL parsing raises on it)."""
    if not header:
        return None
    h = header.strip().lower()
    port: str | None = None  # None: no port given
    if h.startswith("["):  # [::1]:8340
        end = h.find("]")
        rest = h[end + 1 :] if end > 0 else ""
        if end <= 0 or (rest and not rest.startswith(":")):
            return None
        h, port = h[1:end], (rest[1:] if rest else None)
    elif h.count(":") == 1:
        h, port = h.split(":", 1)
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        return None
    return h or None


def path_of(request: Request) -> str:
    """The request's path, from the ASGI scope: ``request.url`` parses the Host header and raised
    (a 500, with the header's value in the log) on ``Host: localhost:99999``."""
    return str(request.scope.get("path", ""))


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
