"""cce-monitor: watch Huawei Cloud / Open Telekom Cloud CCE jobs and report their progress."""

from importlib.metadata import PackageNotFoundError, version

from monitor.errors import MonitorError
from monitor.events import Event, EventType
from monitor.model import Job, Phase

try:
    __version__ = version("cce-monitor")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["Event", "EventType", "Job", "MonitorError", "Phase", "__version__"]
