"""TLS settings shared by every outgoing connection: verification is always on; a CA bundle may be added.

There is deliberately no switch to turn verification off. A private CA is supported by giving its bundle
(``http.ca_bundle`` for CCE and IAM, option ``ca_bundle`` for the webhook and chat sinks); it is loaded at start-up,
so a missing or unreadable file is a configuration error, not a failure at the first request.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

from yarl import URL

from monitor.core.errors import ConfigError

__all__ = ["ca_bundle_option", "is_loopback", "ssl_context", "warn_plain_http"]

logger = logging.getLogger(__name__)


def ssl_context(ca_bundle: str | None, *, what: str = "ca_bundle") -> ssl.SSLContext | bool:
    """``True`` (the system's trust store) or a verifying context that also trusts ``ca_bundle``."""
    if not ca_bundle:
        return True
    context = ssl.create_default_context()  # the system's trust store ...
    try:
        context.load_verify_locations(cafile=ca_bundle)  # ... plus the bundle: a private CA does not replace it
        return context
    except FileNotFoundError:
        raise ConfigError(f"{what}: {ca_bundle} does not exist") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{what}: {ca_bundle} is not a readable PEM CA bundle ({type(exc).__name__})") from None


def ca_bundle_option(value: object, what: str) -> str | None:
    """A ``ca_bundle`` option as given (None: none), checked now: ``what`` names it in the ConfigError when it is
    not a path or its bundle does not load."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a path")
    ssl_context(value, what=what)
    return value


def is_loopback(url: URL) -> bool:
    host = url.host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plain_http(url: URL, what: str, shown: str | None = None) -> None:
    """Say so, loudly, when credentials would travel unencrypted (plain http to a host other than loopback).

    ``shown`` is how to name the URL in the message (default: without userinfo and query, which may be secret).
    """
    if url.scheme == "http" and not is_loopback(url):
        name = shown if shown is not None else str(url.with_user(None).with_query(None).with_fragment(None))
        logger.warning("%s %s uses plain http: credentials and data travel unencrypted; use https", what, name)
