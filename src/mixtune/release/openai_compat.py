"""Small pieces of the OpenAI wire format shared by the server and the gateway.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so the official
client raises its typed exceptions (``AuthenticationError`` for 401, ``BadRequestError`` for 400...).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

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


async def json_body(request) -> tuple[Any, Any]:
    """``(parsed body, None)``, or ``(None, 400 response)`` when the body is not JSON."""
    try:
        return json.loads(await request.body()), None
    except ValueError:  # includes invalid UTF-8
        return None, error_response(400, "request body is not valid JSON")


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
    return None


def content_text(content: Any) -> str:
    """Flatten OpenAI message content (a string or a list of text parts) to plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
