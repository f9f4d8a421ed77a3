"""The routing-quality benchmark (issue 3): contenders, client, fleet, runner, report.

Run it with ``python -m benchmarks.routing.run`` (``--quick`` for ``make bench-routing``).
"""
