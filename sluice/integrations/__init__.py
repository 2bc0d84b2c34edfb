"""Producers that feed Sluice's ingest API from job frameworks (Celery for now).

Nothing here is imported by the server: each integration imports its
framework lazily, so the server never depends on Celery.
"""
