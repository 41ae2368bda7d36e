"""The CCE job API client: one pooled aiohttp session, authentication, and the error tree.

A source of snapshots: ``await client.fetch(job_id)`` returns a :class:`~monitor.core.model.Job`, and for node
rollouts ``nodes(cluster_id)`` and ``nodepool(cluster_id, nodepool_id)`` return
:mod:`~monitor.core.nodes` snapshots; each raises a :class:`~monitor.core.errors.MonitorError` subclass that
says whether retrying helps (see :mod:`monitor.core.errors`). All share one request path.

It holds no rate limit: the scheduler owns it, acquires before each request and
reacts to ``ThrottledError`` itself.

What the client does with each outcome:

* 2xx with a job body → the parsed snapshot; a body that is not a job → ``MalformedResponseError``.
* 401 → asks the auth provider; a provider that can fetch a new token (IAM password) drops the refused one and
  the request is sent once more; otherwise, or if that fails too, ``AuthError``. 403 → ``AuthError``.
* 404 → ``NotFoundError`` (the scheduler decides whether it is final: new jobs may 404 briefly).
* 429 → ``ThrottledError`` with ``retry_after`` when sent.
* 5xx → ``ServerError``; connection failures → ``ConnectError``; timeouts → ``RequestTimeoutError``.

The caller takes the rate-limit slot for a request; the retry after a 401 awaits ``permit`` first, so that it
passes the limit too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import aiohttp
from annotated_types import Ge, Gt
from pydantic import ConfigDict, with_config
from yarl import URL

from monitor.cce.auth import Auth
from monitor.cce.tls import ssl_context, warn_plain_http
from monitor.core.bounds import check_bounds
from monitor.core.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    MalformedResponseError,
    RequestTimeoutError,
    api_error,
    transport_detail,
)
from monitor.core.model import Job, ParseMemo, parse_job, validate_id
from monitor.core.nodes import Node, NodePool, parse_node_list, parse_nodepool
from monitor.core.version import USER_AGENT

__all__ = ["CCEClient", "ClientSettings", "HttpSettings"]

logger = logging.getLogger(__name__)

_MAX_BODY = 8 * 1024 * 1024
# IAM tokens are up to 16 KB (X-Subject-Token in, X-Auth-Token out); aiohttp's default limit is 8190 bytes.
MAX_HEADER = 32 * 1024
_SECRET_HEADERS = ("X-Auth-Token", "Authorization")
_URL_CACHE = 65_536
_PREFIX_RE = re.compile(r"(/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){1,4}")


# The config file's ``http:`` section is this class (pydantic reads its fields and bounds): no other copy.
@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
@dataclass(frozen=True, slots=True)
class HttpSettings:
    """How to talk to CCE and IAM. Timeouts are seconds; ``ca_bundle`` adds a CA file; TLS is always verified."""

    connect_timeout: Annotated[float, Gt(0)] = 10.0
    total_timeout: Annotated[float, Gt(0)] = 30.0
    max_connections: Annotated[int, Ge(1)] = 64
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        check_bounds(self, "http")
        ssl_context(self.ca_bundle, what="http.ca_bundle")  # a bad bundle fails here, at start-up


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings(HttpSettings):
    """Where CCE is (``endpoint``, ``project_id``) and how to talk to it (:class:`HttpSettings`)."""

    endpoint: str
    project_id: str
    api_prefix: str = "/api/v3"
    """The job API's path: ``/api/v3`` for CCE, ``/autopilot/v3`` for CCE Autopilot."""

    def __post_init__(self) -> None:
        url = URL(self.endpoint)
        if url.user or url.password:
            raise ConfigError("endpoint must not carry credentials (user:password@)")
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"endpoint {self.endpoint!r} must be an http(s) URL with a host")
        if url.query_string or url.fragment:
            raise ConfigError("endpoint must not carry a query or fragment")
        if url.path not in ("", "/"):
            # A path (/api/v3, copied from a request URL) would make every request a 404 APIGW.0101.
            base = str(url.with_path("/")).rstrip("/")
            raise ConfigError(f"endpoint {self.endpoint!r} must not have a path ({url.path}): give {base}")
        validate_id(self.project_id, "project id")
        if not _PREFIX_RE.fullmatch(self.api_prefix):
            raise ConfigError(f"api_prefix {self.api_prefix!r} must be a path like /api/v3 or /autopilot/v3")
        HttpSettings.__post_init__(self)


class CCEClient:
    """Reads CCE job progress. Use as ``async with CCEClient(settings, auth) as client: ...``."""

    __slots__ = ("_auth", "_base", "_owns_session", "_session", "_timeout", "_urls", "settings")

    def __init__(
        self,
        settings: ClientSettings,
        auth: Auth,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.settings = settings
        self._auth = auth
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=settings.total_timeout, sock_connect=settings.connect_timeout)
        self._base = f"{settings.endpoint.rstrip('/')}{settings.api_prefix}/projects/{settings.project_id}/jobs/"
        self._urls: dict[str, URL] = {}  # job id (validated) → its URL: a poll builds neither again

    def __repr__(self) -> str:
        return f"CCEClient(endpoint={self.settings.endpoint!r}, auth={self._auth.kind})"

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            warn_plain_http(URL(self.settings.endpoint), "CCE endpoint")
            ssl_ctx = ssl_context(self.settings.ca_bundle, what="http.ca_bundle")
            connector = aiohttp.TCPConnector(limit=self.settings.max_connections, ssl=ssl_ctx, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT},
                max_line_size=MAX_HEADER,
                max_field_size=MAX_HEADER,
            )
            # aiohttp silently re-sends an idempotent request once when a kept-alive connection drops. That
            # request would bypass our rate limit (one slot, two requests to CCE) and hide the failure; we
            # retry through the scheduler instead. No public switch exists; tests/test_client.py notices if
            # this private one stops working.
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    async def __aenter__(self) -> CCEClient:
        self._ensure_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session if this client created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def fetch(
        self,
        job_id: str,
        memo: ParseMemo | None = None,
        *,
        permit: Callable[[], Awaitable[None]] | None = None,
    ) -> Job:
        """One job's progress as a snapshot, or an error from the tree (see the module docstring).

        ``memo`` (one per job, kept by the caller) makes repeated polls cheap: a byte-identical answer is the
        previous snapshot and unchanged parts are reused (:class:`~monitor.core.model.ParseMemo`). The caller
        takes the rate-limit slot for this request; a second request — the retry after a refused token — first
        awaits ``permit`` (the scheduler passes its limiter's ``acquire``).
        """
        url = self._urls.get(job_id)
        if url is None:
            validate_id(job_id, "job id")
            if len(self._urls) >= _URL_CACHE:
                self._urls.clear()
            url = self._urls[job_id] = URL(self._base + job_id, encoded=True)
        body, request_id = await self._get(url, ("job", job_id), permit)
        try:
            return memo.parse(body) if memo is not None else parse_job(body)
        except MalformedResponseError as exc:
            raise MalformedResponseError(f"job {job_id}: {exc.message}", request_id=request_id) from None

    async def nodes(self, cluster_id: str, *, permit: Callable[[], Awaitable[None]] | None = None) -> tuple[Node, ...]:
        """Every node of a cluster (``GET .../clusters/{cluster_id}/nodes``): one request for all of them."""
        what = f"nodes of cluster {cluster_id}"
        url = self._cluster_url(cluster_id, "nodes")
        body, request_id = await self._get(url, ("nodes of cluster", cluster_id), permit)
        try:
            return parse_node_list(body)
        except MalformedResponseError as exc:
            raise MalformedResponseError(f"{what}: {exc.message}", request_id=request_id) from None

    async def nodepool(
        self, cluster_id: str, nodepool_id: str, *, permit: Callable[[], Awaitable[None]] | None = None
    ) -> NodePool:
        """One node pool's state (``GET .../clusters/{cluster_id}/nodepools/{nodepool_id}``)."""
        what = f"node pool {nodepool_id}"
        url = self._cluster_url(cluster_id, "nodepools", validate_id(nodepool_id, "node pool id"))
        body, request_id = await self._get(url, ("node pool", nodepool_id), permit)
        try:
            return parse_nodepool(body)
        except MalformedResponseError as exc:
            raise MalformedResponseError(f"{what}: {exc.message}", request_id=request_id) from None

    def _cluster_url(self, cluster_id: str, *path: str) -> URL:
        s = self.settings
        base = f"{s.endpoint.rstrip('/')}{s.api_prefix}/projects/{s.project_id}/clusters/"
        return URL("/".join([base + validate_id(cluster_id, "cluster id"), *path]), encoded=True)

    async def _get(
        self, url: URL, what: tuple[str, str], permit: Callable[[], Awaitable[None]] | None
    ) -> tuple[bytes, str | None]:
        """One authenticated GET: the body of a 2xx answer, or an error from the tree. A refused token is
        renewed once (if the provider can) and the request sent again, after ``permit``."""
        session = self._ensure_session()
        refreshed = False
        while True:
            headers: dict[str, str] = {"Content-Type": "application/json"}
            await self._auth.apply(session, "GET", url, headers, b"")
            try:
                return await self._request(session, url, headers, what)
            except AuthError as exc:
                if exc.status != 401 or refreshed or not await self._auth.unauthorized(headers):
                    raise
                refreshed = True
                if permit is not None:
                    await permit()

    async def _request(
        self, session: aiohttp.ClientSession, url: URL, headers: dict[str, str], about: tuple[str, str]
    ) -> tuple[bytes, str | None]:
        """One GET; ``about`` (what, id) names it in errors, built only when one happens."""
        try:
            # The timeout is given per request so that it also holds on a session the caller passed in.
            async with session.get(url, headers=headers, timeout=self._timeout) as resp:
                status = resp.status
                request_id = resp.headers.get("X-Request-Id")
                length = resp.content_length
                # Content-Length is the compressed size when a body is encoded, so only trust it when not.
                if length is not None and length <= _MAX_BODY and "Content-Encoding" not in resp.headers:
                    body = await resp.read()
                else:
                    body = await _read_limited(resp, request_id)
                if status >= 300:
                    error = api_error(
                        status,
                        body,
                        content_type=resp.headers.get("Content-Type", ""),
                        request_id=request_id,
                        retry_after=resp.headers.get("Retry-After"),
                        secrets=_secrets(headers),
                    )
                    raise error
        except TimeoutError:
            raise RequestTimeoutError(f"{' '.join(about)}: request timed out") from None
        except aiohttp.ClientPayloadError as exc:
            detail = transport_detail(exc, _secrets(headers))
            raise ConnectError(f"{' '.join(about)}: response body broken off: {detail}") from None
        except aiohttp.ClientError as exc:
            raise ConnectError(f"{' '.join(about)}: {transport_detail(exc, _secrets(headers))}") from None
        return body, request_id


def _secrets(headers: dict[str, str]) -> list[str]:
    """What an answer or a transport error might quote back at us: masked wherever it shows up."""
    return [headers[name] for name in _SECRET_HEADERS if headers.get(name)]


async def _read_limited(resp: aiohttp.ClientResponse, request_id: str | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > _MAX_BODY:
            raise MalformedResponseError(f"body larger than {_MAX_BODY} bytes", request_id=request_id)
        chunks.append(chunk)
    return b"".join(chunks)
