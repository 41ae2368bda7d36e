"""The simulated IAM: ``POST /v3/auth/tokens`` (password tokens, project scope by id or name, ``token_length``
long, in ``X-Subject-Token``) and ``GET /v3/projects[?name=]`` (authenticated by token or AK/SK signature, as
IAM's Keystone API is; ``{"projects": [{"id", "name", ...}]}``), plus the check of a temporary AK/SK's
``X-Security-Token`` that every signed request goes through.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from monitor.sim.config import SimulatorConfig
from monitor.sim.faults import draw_faults
from monitor.sim.timeline import NS, wall_time

if TYPE_CHECKING:
    from monitor.sim.server import Simulator

__all__ = ["add_iam_routes", "security_token_problem"]


def add_iam_routes(app: web.Application, sim: Simulator) -> None:
    """Add IAM's routes of ``sim`` to ``app``."""
    app.router.add_post("/v3/auth/tokens", partial(_tokens, sim))
    app.router.add_get("/v3/projects", partial(_projects, sim))


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


def security_token_problem(config: SimulatorConfig, request: web.Request, signed: list[str]) -> str | None:
    """A temporary AK/SK's ``X-Security-Token``: required, signed and equal when configured, else refused."""
    sent = request.headers.get("X-Security-Token")
    expected = config.security_token
    if expected is None:
        return None if sent is None else "security token given for a permanent access key"
    if sent is None:
        return "the security token is missing"
    if "x-security-token" not in signed:
        return "x-security-token must be signed"
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        return "verify security token fail"
    return None


async def _projects(sim: Simulator, request: web.Request) -> web.Response:
    """``GET /v3/projects[?name=...]``, authenticated as IAM does (token or AK/SK signature)."""
    sim.project_lookups += 1
    if (problem := await sim._authenticate(request)) is not None:
        return _json(401, {"error": {"code": 401, "title": "Unauthorized", "message": problem["error_msg"]}})
    cfg = sim.config
    name = request.rel_url.query.get("name")
    everything = [(cfg.project_id, cfg.project_name), *cfg.extra_projects]
    domain_id = uuid.uuid5(uuid.NAMESPACE_DNS, cfg.iam_domain).hex
    projects = [
        {"id": pid, "name": pname, "domain_id": domain_id, "enabled": True, "is_domain": False}
        for pid, pname in everything
        if name is None or pname == name
    ]
    return _json(200, {"projects": projects, "links": {"self": str(request.url)}})


async def _tokens(sim: Simulator, request: web.Request) -> web.Response:
    """``POST /v3/auth/tokens``: a password token for the project scoped by id or name, in ``X-Subject-Token``."""
    sim._counters.iam_token_requests += 1
    if sim.config.iam_delay:
        await asyncio.sleep(sim.config.iam_delay)
    if sim.config.faults_on_iam:
        draw = draw_faults(sim._rng_faults, sim._faults)
        if (early := await sim._transport_faults(request, draw)) is not None:
            return early
        if draw.error_500:
            return _json(500, {"error": {"code": 500, "title": "Internal Server Error", "message": "Error"}})
    try:
        auth = orjson.loads(await request.read())["auth"]
        methods = auth["identity"]["methods"]
        user = auth["identity"]["password"]["user"]
        name, password, domain = user["name"], user["password"], user["domain"]["name"]
        project = auth["scope"]["project"]
        scope = (project.get("id", sim.config.project_id), project.get("name", sim.config.project_name))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        message = "The request body is invalid."
        return _json(400, {"error": {"code": 400, "title": "Bad Request", "message": message}})
    cfg = sim.config
    if (
        "password" not in methods
        or name != cfg.iam_user
        or domain != cfg.iam_domain
        or not isinstance(password, str)
        or not hmac.compare_digest(password.encode(), cfg.iam_password.encode())
    ):
        message = "The username or password is wrong."
        return _json(401, {"error": {"code": 401, "title": "Unauthorized", "message": message}})
    if scope != (cfg.project_id, cfg.project_name):
        message = "The project in the scope is not found."
        return _json(401, {"error": {"code": 401, "title": "Unauthorized", "message": message}})
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    token = "MII" + "".join(sim._rng_tokens.choices(alphabet, k=cfg.token_length - 3))
    issued = sim._clock()
    sim._tokens[token] = issued + sim._token_ttl
    sim._counters.tokens_issued += 1
    now = sim.now_ns()
    iam_format = "%Y-%m-%dT%H:%M:%S.%fZ"
    domain_ref = {"id": uuid.uuid5(uuid.NAMESPACE_DNS, cfg.iam_domain).hex, "name": cfg.iam_domain}
    body = {
        "token": {
            "expires_at": wall_time(now + round(sim._token_ttl * NS)).strftime(iam_format),
            "issued_at": wall_time(now).strftime(iam_format),
            "methods": ["password"],
            "catalog": [],
            "project": {"id": cfg.project_id, "name": cfg.project_name, "domain": domain_ref},
            "user": {
                "id": cfg.project_id[::-1],
                "name": cfg.iam_user,
                "domain": domain_ref,
                "password_expires_at": "",
            },
            "roles": [{"id": "0", "name": "op_fine_grained"}],
        }
    }
    return _json(201, body, {"X-Subject-Token": token})
