"""The package version and the User-Agent every outgoing request carries (one definition of each)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cce-monitor")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

USER_AGENT = f"cce-monitor/{__version__}"

__all__ = ["USER_AGENT", "__version__"]
