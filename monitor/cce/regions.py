"""Regions: the CCE and IAM endpoints a region name stands for, and the project id IAM knows it by.

Two clouds share the API. Huawei Cloud names its hosts ``{service}.{region}.myhuaweicloud.com``; Open Telekom
Cloud ``{service}.{region}.otc.t-systems.com``. The exceptions are few and written down here:

* Huawei ``eu-west-101`` (Dublin) is served from ``myhuaweicloud.eu``, for CCE
  (``huaweicloudsdkcce/v3/region/cce_region.py``: ``EU_WEST_101``) and for IAM alike.
* OTC ``eu-ch2`` (Swiss) lives under ``sc.otc.t-systems.com`` and its public IAM host is ``iam-pub``
  (the ``auth_url`` that OTC users configure for Terraform and openstacksdk:
  ``https://iam-pub.eu-ch2.sc.otc.t-systems.com/v3``).

The vendor SDK falls back to the global ``https://iam.myhuaweicloud.com`` for regions missing from its IAM list
(``huaweicloudsdkcore/auth/internal.py``: ``IamHelper.DEFAULT_ENDPOINT``); we use the regional host of the same
pattern instead, which answers for every region in that list and for the ones added since (the global host
does not serve ``myhuaweicloud.eu``).

:func:`project_id_for` is the vendor SDK's lookup for credentials without a project id
(``huaweicloudsdkcore/auth/credentials.py``: ``BasicCredentials.process_auth_params`` sends
``GET {iam}/v3/projects?name={region}`` and wants exactly one project back).
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import aiohttp
import orjson
from yarl import URL

from monitor.cce.auth import AKSKAuth, Auth, iam_base
from monitor.cce.client import MAX_HEADER
from monitor.cce.tls import ssl_context
from monitor.core.errors import (
    ConfigError,
    ConnectError,
    MalformedResponseError,
    RequestTimeoutError,
    api_error,
    transport_detail,
)
from monitor.core.model import validate_id

__all__ = [
    "CLOUDS",
    "OTC_REGIONS",
    "Cloud",
    "cce_endpoint",
    "cloud_of",
    "default_cloud",
    "endpoints",
    "fill_from_region",
    "iam_endpoint",
    "is_known",
    "lookup_project",
    "project_id_for",
    "validate_region",
]

logger = logging.getLogger(__name__)

Cloud = Literal["huawei", "otc"]
CLOUDS: tuple[Cloud, ...] = ("huawei", "otc")

# Open Telekom Cloud's regions (Germany, the Netherlands, Switzerland); every other name is Huawei Cloud's.
OTC_REGIONS = frozenset({"eu-de", "eu-nl", "eu-ch2"})

# The CCE regions of the vendor SDK (huaweicloudsdkcce 3.1.219, CceRegion.static_fields): names only, to tell a
# typo from a region; a name missing here still gets the pattern's endpoint, with a warning.
_HUAWEI_CCE_REGIONS = frozenset(
    {
        "cn-north-1", "cn-north-2", "cn-north-4", "cn-north-9", "cn-north-11", "cn-north-12", "cn-south-1",
        "cn-south-2", "cn-south-4", "cn-east-2", "cn-east-3", "cn-east-4", "cn-east-5", "cn-southwest-2",
        "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5", "af-south-1",
        "af-north-1", "sa-brazil-1", "la-south-2", "la-north-2", "na-mexico-1", "ru-northwest-2", "ru-moscow-1",
        "tr-west-1", "ae-ad-1", "me-east-1", "my-kualalumpur-1", "eu-west-0", "eu-west-101",
    }
)  # fmt: skip
_HUAWEI_EU = frozenset({"eu-west-101"})  # served from myhuaweicloud.eu
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z0-9]+)+$")


def validate_region(region: str) -> str:
    """``region`` if it looks like a region name (``eu-de``, ``cn-north-4``), else :class:`ConfigError`.

    It goes into a host name, so nothing but lower-case letters, digits and inner dashes passes.
    """
    if not _REGION.match(region) or len(region) > 40:
        shown = region if len(region) <= 40 and region.isprintable() else region[:37].encode("unicode_escape")
        raise ConfigError(f"region {str(shown)!r} is not a region name such as eu-de or cn-north-4")
    return region


def default_cloud(region: str) -> Cloud:
    """The cloud a region name belongs to when ``cloud`` is not given: OTC for its three regions, else Huawei."""
    return "otc" if region in OTC_REGIONS else "huawei"


def is_known(region: str, cloud: Cloud) -> bool:
    """Whether ``region`` is one we know on ``cloud`` (an unknown one still gets the pattern's endpoints)."""
    return region in (OTC_REGIONS if cloud == "otc" else _HUAWEI_CCE_REGIONS)


def _host(service: str, region: str, cloud: Cloud) -> str:
    if cloud == "otc":
        if region == "eu-ch2":
            return f"{'iam-pub' if service == 'iam' else service}.eu-ch2.sc.otc.t-systems.com"
        return f"{service}.{region}.otc.t-systems.com"
    return f"{service}.{region}.myhuaweicloud.{'eu' if region in _HUAWEI_EU else 'com'}"


def cce_endpoint(region: str, cloud: Cloud) -> str:
    """The CCE endpoint of a region, e.g. ``https://cce.eu-de.otc.t-systems.com``."""
    return f"https://{_host('cce', validate_region(region), cloud)}"


def iam_endpoint(region: str, cloud: Cloud) -> str:
    """The IAM endpoint of a region, e.g. ``https://iam.eu-de.otc.t-systems.com`` (no ``/v3``)."""
    return f"https://{_host('iam', validate_region(region), cloud)}"


def cloud_of(region: str, cloud: object) -> Cloud:
    """``cloud`` if it names one, else the region's :func:`default_cloud`."""
    return "otc" if cloud == "otc" else "huawei" if cloud == "huawei" else default_cloud(region)


def fill_from_region(raw: dict[object, object], origin: str) -> None:
    """In a config file's mapping, a ``region`` stands in for what is not given: ``endpoint``, ``iam_endpoint``
    and ``project_id`` (``None``: looked up later). An unknown region gets the pattern's endpoints and a warning
    naming ``origin``; a wrong type or an unknown ``cloud`` is left for validation."""
    region, cloud = raw.get("region"), raw.get("cloud")
    if not isinstance(region, str):
        return
    validate_region(region)
    chosen = cloud_of(region, cloud)
    missing = [k for k in ("endpoint", "iam_endpoint") if raw.get(k) is None]
    if raw.get("endpoint") is not None and "iam_endpoint" in missing:
        # A CCE endpoint of one's own (private, a simulator) says nothing about which IAM goes with it: the
        # region's public IAM is not asked for a token or a project on a guess.
        missing.remove("iam_endpoint")
    if missing and not is_known(region, chosen):
        logger.warning("%s: %s is not a %s region we know; using the pattern's endpoints", origin, region, chosen)
    raw.update({k: v for k, v in endpoints(region, chosen).items() if k in missing})
    raw.setdefault("project_id", None)


def endpoints(region: str, cloud: Cloud) -> dict[str, str]:
    """``{"endpoint": CCE, "iam_endpoint": IAM}`` of a region, as the config file names them."""
    return {"endpoint": cce_endpoint(region, cloud), "iam_endpoint": iam_endpoint(region, cloud)}


async def lookup_project(
    auth: Auth, iam: str | None, region: str | None, *, request_timeout: float, ca_bundle: str | None = None
) -> str:
    """The project id for credentials without one: IAM's project named as the credentials scope their token
    (an OTC ``project_name`` such as ``eu-de_team``), else after the region, as the vendor SDK does. An AK/SK
    provider learns the id too, for its ``X-Project-Id`` header. Raises :class:`MonitorError`."""
    name = getattr(auth, "project_name", None) or region
    iam = iam or getattr(auth, "iam_endpoint", None)
    if not name or not iam:
        raise ConfigError("project_id is required: give --project-id, or a region to look it up from IAM")
    project_id = await project_id_for(iam, name, auth, request_timeout=request_timeout, ca_bundle=ca_bundle)
    if isinstance(auth, AKSKAuth) and auth.project_id is None:
        auth.project_id = project_id
    return project_id


async def project_id_for(
    iam: str, name: str, auth: Auth, *, request_timeout: float, ca_bundle: str | None = None
) -> str:
    """The id of the one project IAM names ``name`` (a region name, or an OTC project name such as
    ``eu-de_team``), asked with ``auth`` (a token or a signed request).

    Raises :class:`ConfigError` when no project or several have that name, :class:`AuthError` when IAM refuses
    the credentials, a transport or malformed-response error otherwise; messages name the project, never a
    credential.
    """
    base = iam_base(iam)
    url = URL(f"{base}/v3/projects").with_query(name=name)
    headers: dict[str, str] = {"Content-Type": "application/json"}
    logger.info("looking up the project id of %s from IAM %s", name, base)
    connector = aiohttp.TCPConnector(ssl=ssl_context(ca_bundle, what="http.ca_bundle"))
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        max_line_size=MAX_HEADER,
        max_field_size=MAX_HEADER,
    )
    try:
        async with session:
            await auth.apply(session, "GET", url, headers, b"")  # a password provider fetches its token here
            async with session.get(url, headers=headers) as resp:
                body = await resp.read()
                request_id = resp.headers.get("X-Request-Id") or resp.headers.get("X-IAM-Trace-Id")
                if resp.status >= 300:
                    ctype = resp.headers.get("Content-Type", "")
                    raise api_error(resp.status, body, content_type=ctype, request_id=request_id)
    except TimeoutError:
        raise RequestTimeoutError(f"IAM project lookup at {base} timed out") from None
    except aiohttp.ClientError as exc:
        raise ConnectError(f"IAM project lookup at {base} failed: {transport_detail(exc, ())}") from None
    try:
        projects = orjson.loads(body)["projects"]
        ids = [str(p["id"]) for p in projects if isinstance(p, dict) and p.get("name", name) == name]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise MalformedResponseError("IAM project list is not JSON with projects", request_id=request_id) from None
    if not ids:
        raise ConfigError(f"IAM knows no project named {name!r}: give project_id (--project-id) instead")
    if len(ids) > 1:
        raise ConfigError(f"IAM has {len(ids)} projects named {name!r}: give project_id (--project-id) instead")
    logger.info("project %s has id %s", name, ids[0])
    return validate_id(ids[0], "project id from IAM")
