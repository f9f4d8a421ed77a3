"""The OpenAI-style HTTP API as epp sees it: which model, which prompt, streaming or not."""
