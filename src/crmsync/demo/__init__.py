"""Everything in one process: ``crmsync run`` (console and workers) and ``crmsync demo``.

- ``services``: uvicorn servers and background tasks on one event loop, stopped together
  on SIGINT/SIGTERM (shared by ``run`` and ``demo``).
- ``datadir``: the demo's data folder, its credentials, reuse or reset.
- ``history``: a few days of throughput history, so the charts mean something at once.
- ``generator``: realistic traffic on both sides, bad data included.
- ``runner``: the demo itself, gluing the emulator, store, workers, console and generator.
"""
