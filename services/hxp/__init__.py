"""HXP-Enterprise LLM Server: model services, gateway and operations tooling."""
