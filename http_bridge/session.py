"""The live page's way past `--api-key`: a signed session cookie set by /login.

A browser cannot put a header on an EventSource or on a page it navigates to,
so the key is typed once into /login (same origin), which answers with a
cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it), Secure over HTTPS. The cookie holds an expiry and an HMAC of it keyed
by the API key, never the key itself; changing the key ends every session.
It opens the live page and its event stream only (`PAGES`, GET and HEAD):
everything else, loading or reloading models included, still needs the key, so a
cookie taken from a browser, or a forged cross-site request where SameSite is not
enforced, cannot spend the models' time or reload them.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

COOKIE = "tfstream_session"
#: How long one login lasts; the page then asks for the key again.
LIFETIME_S = 12 * 3600
#: Methods a session cookie authorises: reading pages and event streams.
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: The only paths a session cookie opens: the live page and its event stream.
PAGES = frozenset({"/streams", "/streams/events"})
#: Longest expiry a token can carry (seconds since 1970, ten digits until 2286).
_EXPIRY_DIGITS = 12
LOGIN_PATH = "/login"

router = APIRouter()


def _mac(key: bytes, expires: int) -> str:
    return hmac.new(key, f"tfstream-session:{expires}".encode(), hashlib.sha256).hexdigest()


def issue(key: bytes, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + LIFETIME_S)
    return f"{expires}.{_mac(key, expires)}"


def opens(method: str, path: str) -> bool:
    """Whether a valid session cookie may authorise this request."""
    return method in SAFE_METHODS and path in PAGES


def valid(key: bytes, token: str, now: float | None = None) -> bool:
    """Whether `token` is one `issue` made with `key` and not expired; anything else,
    whatever its characters, is False (never an exception: the token is the client's).
    `str.isdigit` takes non-ASCII digits that `int` may refuse, and `compare_digest`
    raises on non-ASCII text, so only ASCII is looked at."""
    expires, _, mac = token.partition(".")
    if not (expires.isascii() and expires.isdigit() and mac.isascii()):
        return False
    if len(expires) > _EXPIRY_DIGITS:
        return False
    fresh = int(expires) > (time.time() if now is None else now)
    return hmac.compare_digest(mac, _mac(key, int(expires))) and fresh


def login_redirect(path: str) -> str:
    return f"{LOGIN_PATH}?next={quote(path, safe='/')}"


def _local(target: str) -> str:
    """Only a path of this site: /login must not send a browser elsewhere."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok else "/streams"


def _form(target: str, problem: str = "") -> str:
    note = f'<p class="problem">{html.escape(problem)}</p>' if problem else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tfstream: sign in</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2rem; }}
.problem {{ color: #b00; }}</style></head>
<body><h1>tfstream</h1><p>This bridge needs its API key.</p>{note}
<form method="post" action="{LOGIN_PATH}">
<input type="hidden" name="next" value="{html.escape(target)}">
<label>API key <input type="password" name="key" autocomplete="current-password" autofocus>
</label> <button type="submit">Sign in</button></form></body></html>
"""


@router.get(LOGIN_PATH, response_class=HTMLResponse, include_in_schema=False)
async def login_page(next: str = "/streams") -> HTMLResponse:
    return HTMLResponse(_form(_local(next)))


@router.post(LOGIN_PATH, include_in_schema=False)
async def login(
    request: Request, key: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/streams"
) -> Response:
    target = _local(next)
    expected = request.app.state.settings.api_key.get_secret_value().encode()
    if expected and not hmac.compare_digest(key.encode(), expected):
        return HTMLResponse(_form(target, "That is not the key."), status_code=401)
    response = RedirectResponse(target, status_code=303)
    if expected:
        response.set_cookie(
            COOKIE,
            issue(expected),
            max_age=LIFETIME_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response
