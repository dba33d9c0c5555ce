"""The HTTP layer of the server client: one JSON request, and its failures sorted by what to do
about them (retry, fail this request, or stop the run). Standard library only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from ..core.errors import EdgeprefError, ModelNotFoundError


class EndpointsDownError(EdgeprefError):
    """No endpoint of a model could be reached; finished work is saved."""


class AuthError(EdgeprefError):
    """A server refused the API key (HTTP 401/403)."""


PERMANENT_5XX = (501, 505)


class Retryable(Exception):
    """Worth another try: 429, 5xx but 501 and 505, a connection that failed (`connection`), an answer
    that is not JSON."""

    def __init__(self, message: str, wait: float | None = None, connection: bool = False):
        super().__init__(message)
        self.wait = wait
        self.connection = connection


class RequestFailed(Exception):
    """The server answered this one request with an error that retrying will not fix."""


def request_json(method: str, url: str, body: dict | None, headers: dict[str, str], timeout: float,
                 api_key_env: str | None = None) -> dict:
    """One HTTP request with a JSON body and answer, its failures sorted by what to do about them."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        if exc.code in (401, 403):
            where = f"the key in {api_key_env}" if api_key_env else "no API key (api_key_env is not set)"
            raise AuthError(
                f"{url} refused the request with HTTP {exc.code}: {detail}",
                f"this model sends {where}; set api_key_env in its model entry and export that variable",
            ) from None
        # 501 (Not Implemented) and 505 (HTTP Version Not Supported) say what the server is, not
        # how it is doing: the same request gets the same answer, so it fails at once.
        if exc.code == 429 or (exc.code >= 500 and exc.code not in PERMANENT_5XX):
            raise Retryable(f"HTTP {exc.code}: {detail}", _retry_after(exc)) from None
        if exc.code == 404 and body is not None and "model" in detail.lower():
            raise ModelNotFoundError(
                f"{url}: {detail}", "check served_model in the model entry (GET .../v1/models lists the ids)"
            ) from None
        raise RequestFailed(f"HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Retryable(f"cannot reach {url}: {reason}", connection=True) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Retryable(f"{url} answered with something that is not JSON ({exc})") from None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read().decode("utf-8", "replace")
    except Exception:
        return exc.reason or ""
    try:
        data = json.loads(raw)
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    except (json.JSONDecodeError, AttributeError):
        return raw[:300]


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
