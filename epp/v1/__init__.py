"""Generated from ``proto/epp/v1/`` by ``proto/generate.py`` (``make proto``): never edit
these modules by hand; a test fails when they differ from what the .proto gives."""
