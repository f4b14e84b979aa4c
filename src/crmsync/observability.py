"""Process-wide counters of what crmsync does outside the store.

``crmsync_crm_requests_total{status}`` counts every HTTP response the Dataverse client
receives, by status code (``dynamics.client``'s ``_send``; a request that got no
response is not counted). The counter lives in this process: ``GET /metrics`` shows it
for the requests made by the same process (``crmsync run``, ``crmsync demo``); a
separate ``crmsync worker`` process keeps its own. The same holds for the two gauges
of Dataverse's ``x-ms-ratelimit-*`` headers, the last values a response carried:
``crmsync_dynamics_ratelimit_remaining_requests`` and
``crmsync_dynamics_ratelimit_remaining_execution_seconds`` (for operators only: Microsoft
says not to pace on them, and crmsync does not).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CRM_REQUESTS = Counter(
    "crmsync_crm_requests",
    "HTTP responses received from Dynamics, by status code",
    labelnames=["status"],
    registry=None,  # added to each metrics page's registry (web.metrics), not the global one
)


def count_crm_response(status: int) -> None:
    CRM_REQUESTS.labels(status=str(status)).inc()


RATELIMIT_REQUESTS = Gauge(
    "crmsync_dynamics_ratelimit_remaining_requests",
    "Requests left in the user's window (x-ms-ratelimit-burst-remaining-xrm-requests)",
    registry=None,
)
RATELIMIT_EXECUTION = Gauge(
    "crmsync_dynamics_ratelimit_remaining_execution_seconds",
    "Execution time left in the user's window (x-ms-ratelimit-time-remaining-xrm-requests)",
    registry=None,
)


def record_ratelimit(requests: int | None, execution_s: float | None) -> None:
    """The last ``x-ms-ratelimit-*`` values a response carried (either may be absent)."""
    if requests is not None:
        RATELIMIT_REQUESTS.set(requests)
    if execution_s is not None:
        RATELIMIT_EXECUTION.set(execution_s)
