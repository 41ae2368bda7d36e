"""The ``SDK-HMAC-SHA256`` request signature used by Huawei Cloud APIs (AK/SK authentication).

Written from the published algorithm rather than depending on ``huaweicloudsdkcore`` at run time: the vendor
package pulls in ``requests``, ``urllib3`` and a synchronous HTTP stack we do not use, and the algorithm is
fifty lines. The test suite signs the same requests with the vendor signer and asserts byte-equal results.

The canonical request is::

    METHOD \\n canonical-path/ \\n canonical-query \\n name:value\\n... \\n signed;names \\n hex(sha256(body))

and the string to sign is ``SDK-HMAC-SHA256 \\n YYYYMMDDTHHMMSSZ \\n hex(sha256(canonical request))``.
This module is pure (no I/O) so the client and the simulator share it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

__all__ = [
    "ALGORITHM",
    "DATE_FORMAT",
    "ParsedAuthorization",
    "authorization",
    "format_sdk_date",
    "parse_authorization",
    "signature",
]

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CONTENT_HEADER = "x-sdk-content-sha256"


def format_sdk_date(when: datetime | None = None) -> str:
    """The ``X-Sdk-Date`` value for ``when`` (default: now), always in UTC."""
    when = datetime.now(UTC) if when is None else when.astimezone(UTC)
    return when.strftime(DATE_FORMAT)


def _encode(value: str) -> str:
    return quote(value, safe="~")


def _canonical_path(path: str) -> str:
    encoded = "/".join(_encode(part) for part in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def _canonical_query(query: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query))


def _signed_header_names(headers: Mapping[str, str]) -> list[str]:
    # The vendor signer signs every header whose name has no underscore.
    return sorted({name.lower() for name in headers if "_" not in name})


def _canonical_request(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed: list[str],
    body: bytes,
) -> str:
    lowered = {name.lower(): str(value).strip() for name, value in headers.items()}
    canonical_headers = "".join(f"{name}:{lowered.get(name, '')}\n" for name in signed)
    # A signed X-Sdk-Content-Sha256 (e.g. UNSIGNED-PAYLOAD) stands in for the body's hash, as in the vendor SDK.
    payload_hash = (lowered.get(_CONTENT_HEADER) or hashlib.sha256(body).hexdigest()) if body else _EMPTY_SHA256
    return "\n".join(
        [
            method.upper(),
            _canonical_path(path),
            _canonical_query(query),
            canonical_headers,
            ";".join(signed),
            payload_hash,
        ]
    )


def signature(
    sk: str,
    *,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    signed: list[str],
    body: bytes,
    sdk_date: str,
) -> str:
    """Hex HMAC-SHA256 signature of a request; ``headers`` must hold every name in ``signed``."""
    canonical = _canonical_request(method, path, query, headers, signed, body)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{sdk_date}\n{digest}"
    return hmac.new(sk.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def authorization(
    ak: str,
    sk: str,
    *,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]] = (),
    headers: Mapping[str, str],
    body: bytes = b"",
) -> str:
    """The ``Authorization`` header value for a request.

    ``headers`` are the headers to sign and must include ``Host`` and ``X-Sdk-Date``; every header in it is
    signed, as the vendor SDK does.
    """
    names = {name.lower() for name in headers}
    if "x-sdk-date" not in names or "host" not in names:
        raise ValueError("headers to sign must include Host and X-Sdk-Date")
    signed = _signed_header_names(headers)
    sdk_date = next(str(v) for k, v in headers.items() if k.lower() == "x-sdk-date")
    sig = signature(
        sk,
        method=method,
        path=path,
        query=query,
        headers=headers,
        signed=signed,
        body=body,
        sdk_date=sdk_date,
    )
    return f"{ALGORITHM} Access={ak}, SignedHeaders={';'.join(signed)}, Signature={sig}"


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    """The parts of an ``SDK-HMAC-SHA256`` Authorization header (used by the simulator to verify)."""

    access: str
    signed_headers: list[str]
    signature: str

    def __repr__(self) -> str:
        return f"ParsedAuthorization(access={self.access!r}, signed_headers={self.signed_headers!r})"


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """Split an Authorization header; ``None`` if it is not an ``SDK-HMAC-SHA256`` one."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme != ALGORITHM:
        return None
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            parts[key] = val
    try:
        return ParsedAuthorization(
            access=parts["Access"],
            signed_headers=[h for h in parts["SignedHeaders"].split(";") if h],
            signature=parts["Signature"],
        )
    except KeyError:
        return None
