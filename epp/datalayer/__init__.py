"""Endpoints and what is known about them: discovery, scraping, engine metric names.

The data layer knows nothing of requests: it keeps the endpoint table fresh, and the
request path reads snapshots from it.
"""
