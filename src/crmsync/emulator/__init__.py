"""A Dataverse Web API emulator: crmsync's offline stand-in for Dynamics 365.

Modules, in the order a request meets them:

- ``server`` (``serve()`` for the CLI: uvicorn, optional TLS), then ``app`` (the ASGI
  application: routing, authentication, ``/_emulator`` control), ``limits``
  (service-protection limits, fault injection) and ``auth`` (token endpoint, bearer checks).
- ``api``, the Web API's routes: ``records`` (writes), ``query`` (reads, paging, change
  tracking), ``properties``, ``refs``, ``keys``, ``expand``, ``annotations``,
  ``bulkdelete``, ``service``, ``metadata``/``metaquery``/``metachanges``/``relationships``
  (``EntityDefinitions``), ``messages``; ``batch`` parses and runs ``$batch``.
- ``odata`` (query options, ``$filter``; no I/O) with ``functions``, ``fetchxml``,
  ``sqlquery``, ``aggregate`` and ``conditions``; ``store`` (records, versions, deletion
  log, optional SQLite persistence); ``model`` (metadata, value validation); ``faults``
  (Dataverse's error bodies).
"""

from crmsync.emulator.app import create_app

__all__ = ["create_app"]
