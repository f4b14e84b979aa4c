"""Process-wide counters of what crmsync does outside the store.

``crmsync_crm_requests_total{status}`` counts every HTTP response the Dataverse client
receives, by status code (``dynamics.client``'s ``_send``; a request that got no
response is not counted). The counter lives in this process: ``GET /metrics`` shows it
for the requests made by the same process (``crmsync run``, ``crmsync demo``); a
separate ``crmsync worker`` process keeps its own.
"""

from __future__ import annotations

from prometheus_client import Counter

CRM_REQUESTS = Counter(
    "crmsync_crm_requests",
    "HTTP responses received from Dynamics, by status code",
    labelnames=["status"],
    registry=None,  # added to each metrics page's registry (web.metrics), not the global one
)


def count_crm_response(status: int) -> None:
    CRM_REQUESTS.labels(status=str(status)).inc()
