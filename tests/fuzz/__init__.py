"""Property-based fuzzing of epp over real sockets.

Two targets, each against real processes on 127.0.0.1: ext_proc gRPC streams sent
straight at epp (``test_extproc_fuzz``) and raw HTTP/1.1 sent through a real Envoy in
front of epp (``test_http_fuzz``). ``pytest tests/fuzz`` runs a short budget; ``make
fuzz`` (``python -m tests.fuzz.run``) a large one, with a JSON report. Budget, seed and
mode come from the environment: see ``tests.fuzz.budget``.
"""
