"""The sync engine: plans, push, pull, conflicts, retry policy and the worker loop."""
