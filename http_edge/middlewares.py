"""Middlewares, outermost first: request id, security headers, CORS, metrics, errors, API keys."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from aiohttp import web

from http_edge.keys import METRICS, REQUEST_ID, SETTINGS
from sayit_actors import errors

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# As the seed's Helmet configuration, with the design's CSP.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "Strict-Transport-Security": "max-age=15552000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Origin-Agent-Cluster": "?1",
    "X-DNS-Prefetch-Control": "off",
    "X-Download-Options": "noopen",
    "X-Permitted-Cross-Domain-Policies": "none",
    "X-XSS-Protection": "0",
}
CORS_METHODS = "GET, POST"
CORS_HEADERS = "Content-Type, Authorization, Idempotency-Key, Last-Event-ID"


def preferred_language(request: web.Request) -> str:
    """'ko' when Accept-Language ranks Korean above English, else 'en'."""
    best, best_q = "en", -1.0
    for item in request.headers.get("Accept-Language", "").split(","):
        tag, _, params = item.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        if lang not in ("ko", "en"):
            continue
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if q > best_q:
            best, best_q = lang, q
    return best


OPENAI_PREFIX = "/v1/"


def _openai_type(status: int) -> str:
    """OpenAI's error ``type`` for a status, which its SDKs map to their exception classes."""
    if status == 401:
        return "authentication_error"
    if status == 429 or status == 503:
        return "rate_limit_error" if status == 429 else "server_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_response(request: web.Request, error: errors.SayitError) -> web.Response:
    request.app[METRICS].errors.labels(error.code).inc()
    message = error.message(preferred_language(request))
    body: dict[str, Any]
    if request.path.startswith(OPENAI_PREFIX):
        kind = _openai_type(error.status)
        body = {"error": {"message": message, "type": kind, "param": error.param, "code": error.code.lower()}}
    else:
        body = {"success": False, "error": {"code": error.code, "message": message}}
    response = web.json_response(body, status=error.status)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    response = await handler(request)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin in request.app[SETTINGS].cors_origins
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204 if allowed else 403)
    else:
        response = await handler(request)
    if allowed and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Expose-Headers"] = f"{REQUEST_ID_HEADER}, Retry-After"
        response.headers["Access-Control-Max-Age"] = "600"
        response.headers.add("Vary", "Origin")
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[METRICS]
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        metrics.http_latency.labels(route, request.method).observe(time.perf_counter() - started)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.SayitError as exc:
        if exc.status >= 500:
            log.warning("request %s failed: %s %s", request.get(REQUEST_ID), exc.code, exc)
        return error_response(request, exc)
    except web.HTTPNotFound:
        return error_response(request, errors.NotFound())
    except web.HTTPMethodNotAllowed:
        return error_response(request, errors.MethodNotAllowed())
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, errors.FileTooLarge())
    except redis.RedisError as exc:
        log.warning("request %s: Redis failed: %s", request.get(REQUEST_ID), exc)
        return error_response(request, errors.ServiceUnavailable("Redis is unreachable"))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(request, errors.InvalidRequest(exc.reason))
        raise
    except Exception:
        log.exception("request %s failed unexpectedly", request.get(REQUEST_ID))
        return error_response(request, errors.Internal())


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[SETTINGS].api_keys
    if keys and request.path.startswith(("/api/", OPENAI_PREFIX)):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token_bytes = token.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token_bytes, k.encode()) for k in keys):
            raise errors.Unauthorized()
    return await handler(request)


MIDDLEWARES = [
    request_id_middleware,
    security_headers_middleware,
    cors_middleware,
    metrics_middleware,
    error_middleware,
    api_key_middleware,
]
