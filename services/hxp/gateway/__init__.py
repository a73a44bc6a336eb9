"""The OpenAI-compatible gateway: a LiteLLM proxy extended through its hooks."""
