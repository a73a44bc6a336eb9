"""The one LiteLLM private field the gateway reads: a response answered from LiteLLM's cache says so in
``_hidden_params["cache_hit"]``. This fails when a LiteLLM upgrade changes that."""

from __future__ import annotations

import asyncio

import litellm

from hxp.gateway.hooks import cache_hit


def test_litellm_marks_a_response_from_its_cache(fake_upstream) -> None:
    async def twice() -> tuple[object, object]:
        litellm.cache = litellm.Cache(type="local")
        try:
            request = {
                "model": "openai/cache-probe",
                "messages": [{"role": "user", "content": "same"}],
                "api_base": fake_upstream.url,
                "api_key": "unused",
                "caching": True,
                "temperature": 0,
            }
            first = await litellm.acompletion(**request)
            for _ in range(200):  # LiteLLM writes its cache in the background after answering
                if litellm.cache.cache.cache_dict:
                    break
                await asyncio.sleep(0.05)
            return first, await litellm.acompletion(**request)
        finally:
            litellm.cache = None

    before = fake_upstream.requests_served()
    first, second = asyncio.run(twice())
    assert fake_upstream.requests_served() == before + 1  # the second came from the cache
    assert not cache_hit(first) and cache_hit(second)
