"""The model services: weights preparation, vLLM engine commands, engine processes."""
