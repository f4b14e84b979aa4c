"""``crmsync emulator``: serve the emulator with uvicorn, over HTTPS when given a key pair.

Microsoft's SDK refuses ``http://`` base URLs and MSAL refuses ``http://`` authorities,
so real clients need ``--certfile``/``--keyfile``; crmsync's own client accepts HTTP.
The h11 protocol is pinned because ``cut_rate`` closes its transport directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import uvicorn

from crmsync.domain import ObjectSpec
from crmsync.emulator.app import create_app

log = logging.getLogger("crmsync.emulator")


def config(
    host: str = "127.0.0.1",
    port: int = 8001,
    db: Path | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    specs: Iterable[ObjectSpec] = (),
) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(db, specs),
        host=host,
        port=port,
        http="h11",
        lifespan="on",
        access_log=False,
        log_level="warning",
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
        # Keep-alive long enough for benchmark clients that pause between pages.
        timeout_keep_alive=30,
        backlog=2048,
        timeout_graceful_shutdown=2,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8001,
    db: Path | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    specs: Iterable[ObjectSpec] = (),
) -> None:
    scheme = "https" if certfile else "http"
    url = f"{scheme}://{host}:{port}/api/data/v9.2/"
    log.warning("emulator listening on %s", url, extra={"event": "emulator.start", "url": url})
    uvicorn.Server(config(host, port, db, certfile, keyfile, specs)).run()
