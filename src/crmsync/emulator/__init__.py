"""A Dataverse Web API emulator: crmsync's offline stand-in for Dynamics 365.

Modules, in the order a request meets them:

- ``server``: ``serve()`` for the CLI (uvicorn, optional TLS).
- ``app``: the ASGI application, routing, authentication, ``/_emulator`` control.
- ``limits``: service-protection limits and fault injection (503, 429, cut connections).
- ``auth``: the OAuth2 client-credentials token endpoint and bearer-token checks.
- ``api``: the Web API's routes; ``records`` (writes), ``query`` (reads, paging, change
  tracking), ``properties``/``refs`` (single properties, ``$ref``), ``keys`` (alternate
  keys), ``expand``, ``annotations``, ``bulkdelete`` (jobs), ``service`` (service
  document, ``$metadata``), ``metadata``/``metaquery``/``metachanges``/``relationships``
  (``EntityDefinitions`` and friends), ``messages`` (``sdkmessagefilters``).
- ``batch``: ``$batch`` multipart parsing and execution.
- ``odata``: query-option parsing and ``$filter`` evaluation, free of I/O; ``functions``
  (query functions), ``fetchxml``, ``sqlquery`` and ``aggregate`` (``$apply``), with
  ``conditions`` (typed comparisons they share).
- ``store``: records, versions, deletion log, optional SQLite persistence.
- ``model``: entity metadata (types, maximum lengths, choices) and value validation.
- ``faults``: Dataverse's error bodies, codes and messages.
"""

from crmsync.emulator.app import create_app

__all__ = ["create_app"]
