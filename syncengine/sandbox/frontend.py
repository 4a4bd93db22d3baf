"""What Zoho's front end answers when the API behind it does not: HTML error pages.

With ``html_errors`` (strict) the calls that ``error_rate`` picks are answered by the front end
instead of the API: an HTML page (``text/html``), status 400, 502 or 503 in equal shares, nothing
applied. Integrators have seen HTML 400s under load from Zoho's web endpoints (audit row 34,
weak evidence for the REST API); a client must not take such a 400 for a verdict on its records.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["HTML_STATUSES", "html_error", "html_status"]

HTML_STATUSES = (400, 502, 503)
_TITLES = {400: "Bad Request", 502: "Bad Gateway", 503: "Service Unavailable"}
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {title}</title></head>
<body><h1>{title}</h1><p>The server could not complete your request. Please try again later.</p>
<hr><address>ZGS</address></body></html>
"""


def html_status(draw: float, rate: float) -> int:
    """Which page a picked call gets: ``draw`` is below ``rate``, split into three equal shares."""
    share = min(len(HTML_STATUSES) - 1, int(draw / rate * len(HTML_STATUSES))) if rate > 0 else 0
    return HTML_STATUSES[share]


def html_error(status: int) -> web.Response:
    """An HTML error page with ``status``, as a front end (not the API) sends it."""
    title = _TITLES.get(status, "Error")
    return web.Response(
        text=_PAGE.format(status=status, title=title),
        status=status,
        content_type="text/html",
        headers={"Server": "ZGS"},
    )
