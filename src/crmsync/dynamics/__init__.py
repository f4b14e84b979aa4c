"""The Dataverse client: auth, requests, paging, change tracking, batches, error mapping.

The public surface is re-exported here; see ``client.DataverseClient``.
"""

from crmsync.dynamics.auth import (
    CachingTokenProvider,
    ClientCredentialsSource,
    Credentials,
    MsalTokenSource,
    StaticTokenProvider,
    TokenProvider,
    TokenSource,
    source_for,
)
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.faults import (
    DeltaTokenExpired,
    PreconditionFailed,
    Throttled,
    TokenRejected,
    classify,
)
from crmsync.dynamics.limiter import AdaptiveLimit, Limiter, ThrottleGate
from crmsync.dynamics.pages import ChangePage, Page
from crmsync.dynamics.writes import ItemResult, Write

__all__ = [
    "AdaptiveLimit",
    "CachingTokenProvider",
    "ChangePage",
    "ClientCredentialsSource",
    "Credentials",
    "DataverseClient",
    "DeltaTokenExpired",
    "ItemResult",
    "Limiter",
    "MsalTokenSource",
    "Page",
    "PreconditionFailed",
    "StaticTokenProvider",
    "ThrottleGate",
    "Throttled",
    "TokenProvider",
    "TokenRejected",
    "TokenSource",
    "Write",
    "classify",
    "source_for",
]
