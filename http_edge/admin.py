"""The admin endpoint: list the node's actors and restart one without restarting the process.

Exists only when ``SAYIT_ADMIN_TOKEN`` is set (otherwise 404), and answers only to
``Authorization: Bearer <token>`` (otherwise 401). A restart is graceful: the actor finishes the
message in hand (a WhisperActor its transcription; a QueueConsumer hands its running chunks
back to the queue) before its replacement starts. Every restart is logged with who asked.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from typing import Any

from aiohttp import web

from http_edge.keys import ACTORS, BRIDGE, SETTINGS
from sayit_actors import errors
from sayit_actors.supervisor import ChildStatus, GetStatus, Restart

log = logging.getLogger(__name__)
RESTART_TIMEOUT_S = 120.0  # a graceful restart waits for the transcription in hand


class ActorNotFound(errors.SayitError):
    code, status = "ACTOR_NOT_FOUND", 404
    message_en = "No actor with this name on this node (see GET /admin/actors)."
    message_ko = "이 노드에 해당 이름의 액터가 없습니다 (GET /admin/actors 참고)."


def _authorize(request: web.Request) -> str:
    """Who asked (for the log); raises Unauthorized unless the bearer token matches."""
    token = request.app[SETTINGS].admin_token or ""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        log.warning("admin request refused from %s", request.remote)
        raise errors.Unauthorized()
    return f"{request.remote} ({request.headers.get('User-Agent', 'no user agent')})"


def _view(status: ChildStatus) -> dict[str, Any]:
    def iso(ts: float | None) -> str | None:
        return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None

    return {
        "name": status.name,
        "kind": status.kind,
        "alive": status.alive,
        "restarts": status.restarts,
        "givenUp": status.given_up,
        "startedAt": iso(status.started_at),
        "doing": status.doing,
        "since": iso(status.since),
    }


async def list_actors(request: web.Request) -> web.Response:
    _authorize(request)
    actors, bridge = request.app[ACTORS], request.app[BRIDGE]
    statuses = await bridge.ask(lambda: actors.supervisor, GetStatus(), timeout_s=10)
    node = {"id": actors.settings.worker_id, "role": actors.settings.worker_mode.value}
    return web.json_response({"success": True, "data": {"node": node, "actors": [_view(s) for s in statuses]}})


async def restart_actor(request: web.Request) -> web.Response:
    who = _authorize(request)
    actors, bridge = request.app[ACTORS], request.app[BRIDGE]
    name = request.match_info["name"]
    log.warning("admin restart of actor %s requested by %s", name, who)
    try:
        status = await bridge.ask(
            lambda: actors.supervisor, Restart(name, f"admin request by {who}"), timeout_s=RESTART_TIMEOUT_S
        )
    except KeyError:
        raise ActorNotFound() from None
    log.warning("actor %s restarted (restart %d) for %s", name, status.restarts, who)
    return web.json_response({"success": True, "data": _view(status)})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/actors", list_actors)
    app.router.add_post("/admin/actors/{name}/restart", restart_actor)
