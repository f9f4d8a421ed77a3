"""A model-selection function as an operator writes one (``--model-selection-function
tests.integration.selection_function:by_tenant``), for test_model_selection.py."""

from __future__ import annotations

from epp.requestcontrol.model_selection import SelectionRequest


def by_tenant(request: SelectionRequest) -> str | None:
    """Tenant "gold" always gets the large model; a prompt naming "boom" makes the function
    fail; anything else is left to the rules (None)."""
    if "boom" in request.text:
        raise RuntimeError("the operator's function failed")
    if request.headers.get("x-tenant") == "gold":
        return "qwen-large"
    return None
