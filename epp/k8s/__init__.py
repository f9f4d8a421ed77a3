"""Kubernetes access: the API client, list/watch informers and leader election.

Nothing here knows about requests or scoring; the data layer and request control turn
what these modules see (pools, pods, objectives, rewrites) into epp's own types.
"""
