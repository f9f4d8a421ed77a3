"""``build_model_selector``: the configured model selection, its function imported.

Apart from ``load`` because it runs the operator's code (the function's module is
imported): ``epp serve`` calls it at start, so a missing module or a typo in the name
stops epp with a configuration error instead of failing requests later.
"""

from __future__ import annotations

from epp.config.settings import Config, ConfigError
from epp.requestcontrol.model_selection import ModelSelector, load_function

__all__ = ["build_model_selector"]


def build_model_selector(config: Config) -> ModelSelector | None:
    """The selector ``config`` describes, or None when model selection is off."""
    selection = config.model_selection
    if selection.default_model is None:
        return None
    function = None
    if selection.function is not None:
        try:
            function = load_function(selection.function)
        except ValueError as exc:
            raise ConfigError(f"model selection function: {exc}") from exc
    return ModelSelector(
        selector_name=selection.selector_name,
        default_model=selection.default_model,
        rules=selection.rules,
        function=function,
        function_budget_s=selection.function_budget_s,
        max_text_chars=selection.max_text_chars,
    )
