"""cce-monitor: watch Huawei Cloud / Open Telekom Cloud CCE jobs and report their progress.

The names a library user needs are re-exported here; everything else lives in one module per concept
(see README "How it works").
"""

from monitor.cce.auth import AKSKAuth, Auth, PasswordAuth, TokenAuth, auth_from_env
from monitor.cce.client import CCEClient, ClientSettings
from monitor.cce.throttle import RateLimiter
from monitor.core.errors import MonitorError
from monitor.core.events import Event, EventType
from monitor.core.model import Job, Phase, parse_job
from monitor.core.secret import Secret
from monitor.core.version import __version__
from monitor.engine.bus import Bus, EventFilter
from monitor.engine.scheduler import Scheduler, SchedulerSettings
from monitor.sinks import Sink, create_sink

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
