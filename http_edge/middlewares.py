"""Middlewares, outermost first: request id, CORS preflight, metrics, errors, API keys.

The headers every response carries (security, CORS, ``Server``, ``Cache-Control``) are added by
``add_headers`` on ``on_response_prepare``, not by a middleware: a middleware sees a streamed
response (Server-Sent Events) only after its headers went out.
"""

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

from http_edge.keys import METRICS, RATE_LIMIT, REQUEST_ID, SETTINGS, TENANT
from sayit_actors import errors

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# As the seed's Helmet configuration, with the design's CSP.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
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
SERVER = "SayIt"  # not aiohttp's name and version
RATE_LIMIT_HEADERS = "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"  # http_edge.limits
# Transcripts, job results and events: no cache, shared or private, keeps a copy.
NO_STORE_PREFIXES = ("/api/", "/v1/audio/", "/admin/")


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
    return await handler(request)  # the header goes out with the others (``add_headers``)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The same headers on every response of the app, just before they are sent (streams included).

    CORS answers an allowed origin by name, with credentials (the app sends ``Authorization``);
    never ``*``, which browsers refuse with credentials and the settings refuse.
    """
    headers = response.headers
    headers.update(SECURITY_HEADERS)
    headers["Server"] = SERVER
    if REQUEST_ID in request:
        headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    if request.path.startswith(NO_STORE_PREFIXES):
        headers["Cache-Control"] = "no-store"
    if RATE_LIMIT in request:
        headers.update(request[RATE_LIMIT])
    origins = request.app[SETTINGS].cors_origins
    if not origins:
        return
    if "Origin" not in headers.getall("Vary", []):
        headers.add("Vary", "Origin")  # the answer differs by origin: caches must keep them apart
    origin = request.headers.get("Origin")
    if origin is not None and origin in origins:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Allow-Methods"] = CORS_METHODS
        headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        headers["Access-Control-Expose-Headers"] = f"{REQUEST_ID_HEADER}, Retry-After, {RATE_LIMIT_HEADERS}"
        headers["Access-Control-Max-Age"] = "600"


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers a preflight itself: 204 for an allowed origin (``add_headers`` adds the rest), else 403."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        origin = request.headers.get("Origin")
        return web.Response(status=204 if origin in request.app[SETTINGS].cors_origins else 403)
    return await handler(request)


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
        if exc.status == 503 and exc.retry_after_s is None:  # every 503 says when to try again
            exc.retry_after_s = request.app[SETTINGS].limits.retry_after_s
        if exc.status >= 500:
            log.warning("request %s failed: %s %s", request.get(REQUEST_ID), exc.code, exc)
        elif exc.__cause__ is not None:  # what the client is not shown (a library's message, a path)
            log.info("request %s: %s: %s", request.get(REQUEST_ID), exc.code, exc.__cause__)
        return error_response(request, exc)
    except web.HTTPNotFound:
        return error_response(request, errors.NotFound())
    except web.HTTPMethodNotAllowed:
        return error_response(request, errors.MethodNotAllowed())
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, errors.FileTooLarge())
    except redis.RedisError as exc:  # down, restarting, or refusing writes (OOM at maxmemory, READONLY, ...)
        log.warning("request %s: Redis failed: %s", request.get(REQUEST_ID), exc)
        retry_after_s = request.app[SETTINGS].limits.retry_after_s
        return error_response(request, errors.ServiceUnavailable("Redis is unavailable", retry_after_s=retry_after_s))
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(request, errors.InvalidRequest(exc.reason))
        raise
    except Exception:
        log.exception("request %s failed unexpectedly", request.get(REQUEST_ID))
        return error_response(request, errors.Internal())


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With API keys: the caller's tenant goes on the request (``TENANT``), by name only.

    Every key is compared, in constant time, so the time taken does not tell which one matched.
    """
    tenants = request.app[SETTINGS].tenants
    if tenants and request.path.startswith(("/api/", OPENAI_PREFIX)):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token_bytes = token.strip().encode()
        matched = [name for name, key in tenants if hmac.compare_digest(token_bytes, key.encode())]
        if scheme.lower() != "bearer" or not matched:
            raise errors.Unauthorized()
        request[TENANT] = matched[0]
    return await handler(request)


MIDDLEWARES = [
    request_id_middleware,
    cors_middleware,
    metrics_middleware,
    error_middleware,
    api_key_middleware,
]
