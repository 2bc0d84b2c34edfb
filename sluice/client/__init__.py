"""Clients of a Sluice server: the batching ingest sender and `tail` (a stream reader).

Neither imports Flask or the server's modules: producers (Celery workers, the
agent, scripts) install only what these need.
"""
