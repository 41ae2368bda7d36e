"""cce-monitor: watch Huawei Cloud / Open Telekom Cloud CCE jobs and report their progress.

The names a library user needs are re-exported here; everything else lives in one module per concept
(see README "How it works").
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cce-monitor")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

from monitor.auth import AKSKAuth, Auth, PasswordAuth, TokenAuth, auth_from_env
from monitor.bus import Bus, EventFilter
from monitor.client import CCEClient, ClientSettings
from monitor.errors import MonitorError
from monitor.events import Event, EventType
from monitor.model import Job, Phase, parse_job
from monitor.scheduler import Scheduler, SchedulerSettings
from monitor.secret import Secret
from monitor.sinks import Sink, create_sink
from monitor.throttle import RateLimiter

__all__ = [
    "AKSKAuth",
    "Auth",
    "Bus",
    "CCEClient",
    "ClientSettings",
    "Event",
    "EventFilter",
    "EventType",
    "Job",
    "MonitorError",
    "PasswordAuth",
    "Phase",
    "RateLimiter",
    "Scheduler",
    "SchedulerSettings",
    "Secret",
    "Sink",
    "TokenAuth",
    "__version__",
    "auth_from_env",
    "create_sink",
    "parse_job",
]
