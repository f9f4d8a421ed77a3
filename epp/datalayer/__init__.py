"""Endpoints and what is known about them: discovery, scraping, engine metric names.

The data layer knows nothing of requests beyond how many are in flight on each endpoint
(request control tells an endpoint when one is routed and when it finishes): it keeps the
endpoint table fresh, and the request path reads snapshots from it.
"""
