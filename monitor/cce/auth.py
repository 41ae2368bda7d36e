"""Authentication providers for the CCE API: a token, an IAM password, or AK/SK request signing.

A provider is one small Protocol (:class:`Auth`): ``apply`` adds its headers to a request about to be sent, and
``unauthorized`` is told about a 401 and answers whether a retry may help (only a provider that can fetch a new
token says yes). Providers hold their secrets in :class:`~monitor.core.secret.Secret`, so no repr, log line or
exception can show them.

* :class:`TokenAuth` — a token you already have (``CCE_AUTH_TOKEN``), sent as ``X-Auth-Token``.
* :class:`PasswordAuth` — ``POST {iam}/v3/auth/tokens`` with user, password, domain and project scope; the token
  (``X-Subject-Token``) is cached until ``expires_at`` minus a margin, fetched again after a 401, and concurrent
  fetches collapse into one request.
* :class:`AKSKAuth` — every request signed ``SDK-HMAC-SHA256`` (:mod:`monitor.cce.signing`), from
  ``HUAWEICLOUD_SDK_AK`` / ``HUAWEICLOUD_SDK_SK`` as the vendor SDK names them. A temporary AK/SK (an agency's or
  STS's) comes with ``HUAWEICLOUD_SDK_SECURITY_TOKEN``, sent as ``X-Security-Token`` and signed with the rest, as
  the vendor signer does (``huaweicloudsdkcore/auth/credentials.py``: ``BasicCredentials.sign_request`` adds the
  header before signing every header).

An IAM endpoint may be given as Terraform's and openstacksdk's ``auth_url`` is, ending in ``/v3``
(``https://iam.eu-de.otc.t-systems.com/v3``): :func:`iam_base` drops it, so requests go to ``.../v3/auth/tokens``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
import orjson
from yarl import URL

from monitor.cce import signing
from monitor.cce.tls import warn_plain_http
from monitor.core.errors import (
    ConfigError,
    ConnectError,
    MalformedResponseError,
    RequestTimeoutError,
    api_error,
    transport_detail,
)
from monitor.core.model import parse_go_time
from monitor.core.secret import Secret

__all__ = ["AKSKAuth", "Auth", "PasswordAuth", "TokenAuth", "auth_from_env", "iam_base"]

logger = logging.getLogger(__name__)

ENV_TOKEN = "CCE_AUTH_TOKEN"  # noqa: S105 - a variable name
ENV_AK = "HUAWEICLOUD_SDK_AK"
ENV_SK = "HUAWEICLOUD_SDK_SK"
ENV_SECURITY_TOKEN = "HUAWEICLOUD_SDK_SECURITY_TOKEN"  # noqa: S105 - a variable name
ENV_IAM_ENDPOINT = "CCE_IAM_ENDPOINT"
ENV_IAM_USER = "CCE_IAM_USER"
ENV_IAM_PASSWORD = "CCE_IAM_PASSWORD"  # noqa: S105 - the name of a variable, not a password
ENV_IAM_DOMAIN = "CCE_IAM_DOMAIN"

_DEFAULT_TOKEN_LIFETIME = 24 * 3600.0


def iam_base(endpoint: str) -> str:
    """An IAM endpoint without a trailing ``/`` or ``/v3``: the root the ``/v3/...`` paths are joined to."""
    base = endpoint.strip().rstrip("/")
    return base.removesuffix("/v3").rstrip("/") if base.endswith("/v3") else base


class Auth(Protocol):
    """What the client needs from an authentication provider."""

    kind: str

    async def apply(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: MutableMapping[str, str],
        body: bytes,
    ) -> None:
        """Add authentication headers to ``headers`` for this request."""
        ...

    async def unauthorized(self, sent_headers: Mapping[str, str]) -> bool:
        """The request sent with ``sent_headers`` got a 401: return whether retrying may succeed."""
        ...


class TokenAuth:
    """A fixed token, sent as ``X-Auth-Token``. A 401 is final: we cannot get another token."""

    __slots__ = ("_token",)
    kind = "token"

    def __init__(self, token: Secret) -> None:
        if not token:
            raise ConfigError("token auth: the token is empty")
        self._token = token

    async def apply(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: MutableMapping[str, str],
        body: bytes,
    ) -> None:
        headers["X-Auth-Token"] = self._token.reveal()

    async def unauthorized(self, sent_headers: Mapping[str, str]) -> bool:
        return False

    def __repr__(self) -> str:
        return "TokenAuth(token=Secret('**********'))"


class PasswordAuth:
    """Tokens from IAM for a user name and password, scoped to one project, cached and refreshed."""

    __slots__ = (
        "_clock",
        "_expires",
        "_fetches",
        "_lock",
        "_margin",
        "_password",
        "_token",
        "domain",
        "iam_endpoint",
        "project_id",
        "project_name",
        "timeout",
        "username",
    )
    kind = "password"

    def __init__(
        self,
        *,
        iam_endpoint: str,
        username: str,
        password: Secret,
        domain: str,
        project_id: str | None = None,
        project_name: str | None = None,
        margin: float = 300.0,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = URL(iam_endpoint)
        if url.user or url.password:
            raise ConfigError("IAM endpoint must not carry credentials (user:password@)")
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"IAM endpoint {iam_endpoint!r} must be an http(s) URL with a host")
        if not username or not password or not domain:
            raise ConfigError("IAM password auth needs a user name, a password and a domain")
        if not project_id and not project_name:
            raise ConfigError("IAM password auth needs a project id or name to scope the token")
        self.iam_endpoint = iam_base(iam_endpoint)
        warn_plain_http(url, "IAM endpoint")
        self.username = username
        self._password = password
        self.domain = domain
        self.project_id = project_id
        self.project_name = project_name
        self._margin = margin
        self.timeout = timeout
        self._clock = clock
        self._token: Secret | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._fetches = 0

    @property
    def fetches(self) -> int:
        """How many token requests this provider has made (for tests and metrics)."""
        return self._fetches

    def __repr__(self) -> str:
        return (
            f"PasswordAuth(iam_endpoint={self.iam_endpoint!r}, username={self.username!r}, "
            f"domain={self.domain!r}, password=Secret('**********'))"
        )

    def _valid(self) -> Secret | None:
        if self._token is not None and self._clock() < self._expires:
            return self._token
        return None

    async def token(self, session: aiohttp.ClientSession) -> Secret:
        """A valid token, fetching one if needed; concurrent callers share one fetch."""
        current = self._valid()
        if current is not None:
            return current
        async with self._lock:
            current = self._valid()  # another caller may have fetched it while we waited
            if current is not None:
                return current
            token, lifetime = await self._fetch(session)
            self._token = token
            # Refresh `margin` seconds early, but never count a fresh token as expired when its whole life
            # is shorter than the margin: then refresh at half-life.
            usable = lifetime - self._margin if lifetime > self._margin else lifetime / 2
            self._expires = self._clock() + usable
            return token

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[Secret, float]:
        scope: dict[str, object] = (
            {"project": {"id": self.project_id}} if self.project_id else {"project": {"name": self.project_name}}
        )
        payload = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.username,
                            "password": self._password.reveal(),
                            "domain": {"name": self.domain},
                        }
                    },
                },
                "scope": scope,
            }
        }
        url = f"{self.iam_endpoint}/v3/auth/tokens"
        self._fetches += 1
        logger.debug("requesting an IAM token for user %s", self.username)
        try:
            async with session.post(
                url,
                data=orjson.dumps(payload),
                headers={"Content-Type": "application/json;charset=utf8"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                body = await resp.read()
                request_id = resp.headers.get("X-Request-Id")
                if resp.status >= 300:
                    raise api_error(
                        resp.status,
                        body,
                        content_type=resp.headers.get("Content-Type", ""),
                        request_id=request_id,
                        retry_after=resp.headers.get("Retry-After"),
                        secrets=(self._password,),
                    )
                subject = resp.headers.get("X-Subject-Token")
        except TimeoutError:
            raise RequestTimeoutError(f"IAM token request to {self.iam_endpoint} timed out") from None
        except aiohttp.ClientError as exc:
            # A token too large for the header limit makes aiohttp quote its start: transport_detail drops it.
            detail = transport_detail(exc, (self._password,))
            raise ConnectError(f"IAM token request to {self.iam_endpoint} failed: {detail}") from None
        if not subject:
            raise MalformedResponseError("IAM answered without an X-Subject-Token header", request_id=request_id)
        return Secret(subject), _token_lifetime(body)

    async def apply(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: MutableMapping[str, str],
        body: bytes,
    ) -> None:
        headers["X-Auth-Token"] = (await self.token(session)).reveal()

    async def unauthorized(self, sent_headers: Mapping[str, str]) -> bool:
        sent = sent_headers.get("X-Auth-Token")
        # Drop the cached token only if it is the one that was refused; a newer one may already be here.
        if self._token is not None and sent is not None and Secret(sent) == self._token:
            self._token = None
            logger.info("IAM token refused by the API; a new one will be requested")
        return True


def _token_lifetime(body: bytes) -> float:
    """Seconds until ``token.expires_at`` in an IAM answer; 24 h when it is missing or unreadable."""
    try:
        data = orjson.loads(body) if body else {}
        expires_raw = data["token"]["expires_at"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _DEFAULT_TOKEN_LIFETIME
    expires = parse_go_time(str(expires_raw))
    if expires is None:
        return _DEFAULT_TOKEN_LIFETIME
    return max(0.0, (expires - datetime.now(UTC)).total_seconds())


class AKSKAuth:
    """Signs every request with an access key and secret key (``SDK-HMAC-SHA256``)."""

    __slots__ = ("_security_token", "_sk", "ak", "project_id")
    kind = "aksk"

    def __init__(
        self, ak: str, sk: Secret, project_id: str | None = None, *, security_token: Secret | None = None
    ) -> None:
        if not ak or not sk:
            raise ConfigError(f"AK/SK auth needs both {ENV_AK} and {ENV_SK}")
        self.ak = ak
        self._sk = sk
        self.project_id = project_id
        self._security_token = security_token or None

    @property
    def temporary(self) -> bool:
        """Whether this is a temporary AK/SK, sent with its security token."""
        return self._security_token is not None

    def __repr__(self) -> str:
        token = ", security_token=Secret('**********')" if self._security_token is not None else ""
        return f"AKSKAuth(ak={self.ak!r}, sk=Secret('**********'){token})"

    async def apply(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        headers: MutableMapping[str, str],
        body: bytes,
    ) -> None:
        to_sign: dict[str, str] = {
            "Content-Type": headers.get("Content-Type", "application/json"),
            "Host": url.raw_authority,
            "X-Sdk-Date": signing.format_sdk_date(),
        }
        if self.project_id:
            to_sign["X-Project-Id"] = self.project_id
        if self._security_token is not None:
            to_sign["X-Security-Token"] = self._security_token.reveal()
        to_sign["Authorization"] = signing.authorization(
            self.ak,
            self._sk.reveal(),
            method=method,
            path=url.raw_path,
            query=list(url.query.items()),
            headers=to_sign,
            body=body,
        )
        headers.update(to_sign)

    async def unauthorized(self, sent_headers: Mapping[str, str]) -> bool:
        return False


def auth_from_env(
    env: Mapping[str, str],
    *,
    project_id: str | None = None,
    iam_endpoint: str | None = None,
    project_name: str | None = None,
) -> Auth:
    """Pick a provider from environment variables, in this order.

    ``CCE_AUTH_TOKEN``; else ``HUAWEICLOUD_SDK_AK`` + ``HUAWEICLOUD_SDK_SK`` (with
    ``HUAWEICLOUD_SDK_SECURITY_TOKEN`` for a temporary pair); else ``CCE_IAM_USER`` +
    ``CCE_IAM_PASSWORD`` + ``CCE_IAM_DOMAIN`` with ``CCE_IAM_ENDPOINT`` (or ``iam_endpoint``).
    A password token is scoped to ``project_id``, else to ``project_name`` (a region's main project is named
    after it). Raises :class:`ConfigError` naming what is missing.
    """
    token = env.get(ENV_TOKEN, "").strip()
    if token:
        return TokenAuth(Secret(token))
    ak, sk = env.get(ENV_AK, "").strip(), env.get(ENV_SK, "").strip()
    if ak or sk:
        security_token = env.get(ENV_SECURITY_TOKEN, "").strip()
        return AKSKAuth(ak, Secret(sk), project_id, security_token=Secret(security_token) if security_token else None)
    user, password = env.get(ENV_IAM_USER, "").strip(), env.get(ENV_IAM_PASSWORD, "")
    domain = env.get(ENV_IAM_DOMAIN, "").strip()
    if user or password or domain:
        endpoint = env.get(ENV_IAM_ENDPOINT, "").strip() or iam_endpoint
        present = {ENV_IAM_USER: user, ENV_IAM_PASSWORD: password, ENV_IAM_DOMAIN: domain, ENV_IAM_ENDPOINT: endpoint}
        missing = [name for name, value in present.items() if not value]
        if missing:
            raise ConfigError(f"IAM password auth needs {', '.join(missing)}")
        assert endpoint is not None
        return PasswordAuth(
            iam_endpoint=endpoint,
            username=user,
            password=Secret(password),
            domain=domain,
            project_id=project_id,
            project_name=None if project_id else project_name,
        )
    raise ConfigError(
        f"no credentials: set {ENV_TOKEN}, or {ENV_AK} and {ENV_SK}, "
        f"or {ENV_IAM_USER}, {ENV_IAM_PASSWORD} and {ENV_IAM_DOMAIN}"
    )
