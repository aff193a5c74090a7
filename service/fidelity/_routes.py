"""Fidelity routes: ``GET /v1/fidelity`` (aggregates), ``GET /v1/fidelity/series`` (the dashboard's data),
``GET /dashboard`` and its two static files (no CDN: plain SVG drawn by our own script)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from litestar import Request, Response, get

from .._access import path_of
from . import _fleet_report, _report

STATIC = Path(__file__).resolve().parents[1] / "static"
# no charset: Litestar appends "; charset=utf-8" to every text/* media type (a second one otherwise)
_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_NO_STORE = {"cache-control": "no-store"}


def _fid(request: Request):
    return request.app.state.ctx.fidelity


def _json(obj, status: int = 200) -> Response:
    return Response(msgspec.json.encode(obj), status_code=status, media_type="application/json", headers=_NO_STORE)


async def _fleet(report) -> Response:
    """A fleet report, or 503 while the shared state cannot be read (the proxy itself goes on)."""
    try:
        return _json(await report)
    except Exception as exc:  # redis down or timing out: say so, without the connection details
        return _json(
            {
                "error": {
                    "message": f"the shared state (redis) is unavailable: {type(exc).__name__}",
                    "type": "service_unavailable",
                }
            },
            503,
        )


@get("/v1/fidelity")
async def fidelity(request: Request) -> Response:
    fid = _fid(request)
    if fid.fleet is not None:  # the whole fleet, from the shared counters
        return await _fleet(_fleet_report.aggregates(fid))
    return _json(await asyncio.to_thread(_report.aggregates, fid))


@get("/v1/fidelity/series")
async def fidelity_series(request: Request) -> Response:
    """``since``: seconds back from now (default a day); ``bucket``: seconds (default: about 120 points)."""
    try:
        since = float(request.query_params.get("since") or 86400.0)
        bucket = float(request.query_params["bucket"]) if request.query_params.get("bucket") else None
    except ValueError:
        since = -1.0
    if not since > 0 or (bucket is not None and not bucket > 0):
        error = {"message": "since and bucket must be positive seconds", "type": "invalid_request_error"}
        return _json({"error": error}, 400)
    fid = _fid(request)
    if fid.fleet is not None:
        return await _fleet(_fleet_report.series(fid, since, bucket))
    return _json(await asyncio.to_thread(_report.series, fid, since, bucket))


@get("/dashboard")
async def dashboard() -> Response:
    html = await asyncio.to_thread((STATIC / "dashboard.html").read_bytes)
    return Response(html, media_type="text/html", headers=_NO_STORE)


@get([f"/dashboard/{name}" for name in _FILES])
async def dashboard_file(request: Request) -> Response:
    name = path_of(request).rsplit("/", 1)[1]  # one of _FILES: no path from the URL reaches the disk
    return Response(await asyncio.to_thread((STATIC / name).read_bytes), media_type=_FILES[name], headers=_NO_STORE)


ROUTES = [fidelity, fidelity_series, dashboard, dashboard_file]
