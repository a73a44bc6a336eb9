"""The LiteLLM configuration generated from the catalogue and the settings (no server)."""

from __future__ import annotations

import yaml

from hxp.core import catalogue, settings
from hxp.gateway import deployments, proxy_config

CAT = catalogue.load()


def _settings(**changes) -> settings.Settings:
    return settings.Settings(**{"master_key": "sk-secret-master", "database_url": "sqlite:///x", **changes})


def test_every_model_routes_to_its_port_with_its_api_settings():
    deployed = deployments.model_list(CAT, {}, "http://{name}:{port}/v1")
    assert [d["model_name"] for d in deployed] == CAT.names
    for model, deployment in zip(CAT.models, deployed):
        params = deployment["litellm_params"]
        assert params["model"] == f"openai/{model.name}"
        assert params["api_base"] == f"http://{model.name}:{model.port}/v1"
        assert params["timeout"] == model.api.timeout_s
        assert params["max_parallel_requests"] == model.api.max_concurrent_requests
        assert params["num_retries"] == model.api.retries
        assert deployment["model_info"]["max_input_tokens"] == model.max_model_len


def test_replicas_share_the_model_name_and_fallbacks_come_from_the_catalogue():
    model = CAT.chat_models[0]
    deployed = deployments.model_list(
        CAT, {model.name: ["http://a:1/v1/", "http://b:2/v1"]}, settings.DEFAULT_BACKEND_URL_TEMPLATE
    )
    replicas = [d for d in deployed if d["model_name"] == model.name]
    assert [d["litellm_params"]["api_base"] for d in replicas] == ["http://a:1/v1", "http://b:2/v1"]
    assert len({d["model_info"]["id"] for d in deployed}) == len(deployed)
    fallbacks = deployments.router_settings(CAT)["fallbacks"]
    assert fallbacks == [{m.name: m.api.fallbacks} for m in CAT.models if m.api.fallbacks]


def test_proxy_config_hooks_stores_and_no_secrets():
    plain = proxy_config.build(_settings(), CAT)
    assert plain["general_settings"]["custom_auth"] == "hxp.gateway.request_context.user_api_key_auth"
    assert "hxp.gateway.hooks.gateway_hooks" in plain["litellm_settings"]["callbacks"]
    assert plain["litellm_settings"]["cache_params"]["type"] == "local"
    assert "coordination_redis" not in plain["general_settings"]
    shared = proxy_config.build(
        _settings(redis_url="redis://:pw-123@redis:6379/0", rate_limit_fail_closed=True, cache_ttl_s=60), CAT
    )
    coordination = shared["general_settings"]["coordination_redis"]
    assert coordination == {
        "url": "os.environ/REDIS_URL",
        "max_connections": 8,
        "client_name": "hxp-litellm-coordination",
    }
    assert shared["litellm_settings"]["cache_params"]["max_connections"] == 8  # each pool bounded (blocking)
    assert shared["general_settings"]["fail_closed_rate_limit_enforcement"] is True
    assert shared["litellm_settings"]["cache_params"]["ttl"] == 60
    text = yaml.safe_dump(shared)
    assert "pw-123" not in text and "sk-secret-master" not in text
