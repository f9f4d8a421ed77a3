"""The Envoy ext_proc side: the gRPC servicer, the per-stream state machine, and the
messages epp sends back. Nothing here knows how a score is computed."""
