"""Small pieces of the OpenAI wire format shared by the server and the gateway.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so the official
client raises its typed exceptions (``AuthenticationError`` for 401, ``BadRequestError`` for 400...).
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

# Default cap on a request body. A chat request is kilobytes; a 100 MB body would otherwise be
# parsed, forwarded and stored (issue 14). Configurable per app (--max-body-bytes).
MAX_BODY_BYTES = 1 << 20

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
          502: "upstream_error", 503: "server_error", 504: "upstream_error"}


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The JSON body OpenAI returns for an error with HTTP ``status``."""
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None):
    """A ``JSONResponse`` in OpenAI's error shape."""
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status,
                        headers=headers)


def bearer_ok(authorization: str | None, api_key: str | None) -> bool:
    """True when no key is configured, or the ``Authorization: Bearer <key>`` header matches it.

    ``hmac.compare_digest`` keeps the comparison constant-time so the key cannot be guessed byte
    by byte from response timings.
    """
    if not api_key:
        return True
    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), api_key.encode())


def too_large(max_bytes: int):
    """413 for a body over ``max_bytes``."""
    return error_response(413, f"request body exceeds {max_bytes} bytes", code="request_too_large")


async def json_body(request, max_bytes: int = MAX_BODY_BYTES) -> tuple[Any, Any]:
    """``(parsed body, None)``, or ``(None, error response)``: 413 over ``max_bytes``, 400 when not JSON.

    The size is checked from ``Content-Length`` before reading and again while streaming (a chunked
    body has no length), so an oversized body is never held in memory whole.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        return None, too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            return None, too_large(max_bytes)
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks)), None
    except orjson.JSONDecodeError:  # includes invalid UTF-8 and integers beyond 64 bits
        return None, error_response(400, "request body is not valid JSON")


def protect_openapi(app, api_key: str | None) -> None:
    """Serve ``/openapi.json`` only with the key when one is set (the schema lists every route).

    Build the app with ``openapi_url=None``; interactive docs stay off.
    """
    from fastapi.responses import JSONResponse

    async def openapi(request):  # a plain Starlette route: no parameter parsing
        if not bearer_ok(request.headers.get("authorization"), api_key):
            return unauthorized()
        return JSONResponse(app.openapi())

    app.add_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)


def unauthorized():
    """401 as OpenAI sends it for a missing or wrong key."""
    return error_response(401, "Incorrect API key provided.", code="invalid_api_key",
                          headers={"WWW-Authenticate": "Bearer"})


def validate_chat_body(body: Any) -> str | None:
    """Return an error message when ``body`` is not a usable chat-completion request, else None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return f"messages[{i}] must be an object with a 'role'"
        content = m.get("content")
        if not isinstance(content, (str, list)) and content is not None:
            return f"messages[{i}].content must be a string"
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    return f"messages[{i}].content[{j}] must be an object with a 'type'"
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    return f"messages[{i}].content[{j}].text must be a string"
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        # bool is an int in Python: ``true`` must not pass as 1; 0 must not fall back to a default
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            return f"'{key}' must be a positive integer"
    meta = body.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            return "'metadata' must be an object"
        bad = next((k for k, v in meta.items() if not isinstance(v, str) or len(v) > 512), None)
        if bad is not None:  # OpenAI's own rule: metadata values are strings of at most 512 characters
            return f"metadata[{bad!r}] must be a string of at most 512 characters"
    return None


def chat_problem_param(problem: str) -> str:
    """The ``param`` an error from :func:`validate_chat_body` refers to."""
    for key in ("max_completion_tokens", "max_tokens", "metadata"):
        if key in problem:
            return key
    return "messages"


def content_text(content: Any) -> str:
    """Flatten OpenAI message content (a string or a list of text parts) to plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
