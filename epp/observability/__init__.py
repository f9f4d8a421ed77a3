"""epp's own metrics, health and logging."""
