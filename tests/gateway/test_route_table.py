"""The trust boundary: only the route table's routes are served; everything else is 404 and reaches nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import redis

from hxp.gateway import route_table
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.servers import RedisServer

CALLERS = ("anonymous", "client", "master")


@pytest.fixture(scope="module")
def proxy_app():
    from hxp.gateway.app import proxy_app

    return proxy_app


def test_every_route_of_the_app_is_classified(proxy_app) -> None:
    """A LiteLLM upgrade that adds a route fails here until the route is served by the table or listed outside."""
    assert route_table.unclassified(proxy_app) == set()


def test_every_route_the_table_lists_has_a_handler(proxy_app) -> None:
    served = route_table.inventory(proxy_app)
    for route in route_table.table().routes:
        handled = {m for kind, path in served if path == route.path for m in kind.split(",")}
        assert set(route.methods) <= handled, f"no handler for {route.methods} {route.path}"


# The model calls LiteLLM itself answers (behind the boundary's checks); every other listed route is ours.
LITELLM_HANDLED = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}


def test_each_listed_route_is_answered_by_the_handler_meant_for_it(proxy_app) -> None:
    """Where ours and LiteLLM's both answer a path, ours is first: a handler of ours that goes missing must not
    leave a listed route to LiteLLM's (e.g. its /v1/responses/{response_id}, which knows no key's ownership)."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount, compile_path

    def answers(context, method: str, path: str) -> bool:
        if isinstance(context.original_route, Mount):
            return (path + "/").startswith(context.path.rstrip("/") + "/")
        return bool(context.methods and method in context.methods and compile_path(context.path)[0].match(path))

    contexts = list(iter_route_contexts(proxy_app.router.routes))  # in the order the app tries them
    for route in route_table.table().routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in route.methods:
            first = next(c for c in contexts if answers(c, method, path))
            module = getattr(getattr(first.original_route, "endpoint", None), "__module__", "(a mount)")
            assert module.startswith("litellm." if route.path in LITELLM_HANDLED else "hxp."), (
                method,
                route.path,
                module,
                first.path,
            )


def test_the_table_matches_paths_and_methods() -> None:
    table = route_table.table()
    hit = table.match("POST", "/v1/vector/collections/docs/documents/delete")
    assert hit.route is not None and hit.route.collection == "write" and hit.params == {"collection": "docs"}
    assert table.match("GET", "/v1/vector/collections/docs/documents/d-1").params["document_id"] == "d-1"
    assert table.match("HEAD", "/health/liveness").route is not None
    assert table.match("DELETE", "/v1/chat/completions").route is None
    assert table.match("DELETE", "/v1/chat/completions").allowed == ("POST",)
    assert table.match("GET", "/v1/chat/completions/extra").route is None


def concrete(kind: str, path: str) -> list[tuple[str, str]]:
    """Requests that reach an outside route: each of its methods on its path with the parameters filled in."""
    url = re.sub(r"\{[^}]+\}", "x", path)
    if kind == "MOUNT":
        return [("GET", url.rstrip("/") + "/"), ("POST", url.rstrip("/") + "/anything")]
    if kind == "WS":
        return [("GET", url)]
    return [(method, url) for method in kind.split(",")]


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[Gateway, FakeUpstream, RedisServer, dict[str, str]]]:
    upstream = FakeUpstream().start()
    server = RedisServer(password="redis-" + "q" * 12)
    server.start()
    factory = GatewayFactory()
    try:
        gateway = factory(upstream.url, env={"REDIS_URL": server.url})
        keys = {"anonymous": "", "client": gateway.create_key(), "master": gateway.master_key}
        yield gateway, upstream, server, keys
    finally:
        factory.close()
        server.stop()
        upstream.stop()


def test_routes_outside_the_table_are_404_for_every_caller_and_reach_nothing(guarded) -> None:
    gateway, upstream, server, keys = guarded
    store = redis.Redis.from_url(server.url)
    canaries = {f"hxp-test-canary-{i}": f"still here {i}" for i in range(5)}
    store.mset(canaries)
    upstream.reset()
    requests = sorted({r for kind, path in route_table.outside() for r in concrete(kind, path)})
    assert ("POST", "/cache/flushall") in requests and ("GET", "/ui/") in requests
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for method, path in requests:
            for caller in CALLERS:
                headers = {"Authorization": f"Bearer {keys[caller]}"} if keys[caller] else {}
                response = client.request(method, path, headers=headers, json={"model": "phi-3-mini"})
                assert response.status_code == 404, (caller, method, path, response.text[:200])
                if method != "HEAD":
                    error = response.json()["error"]
                    assert error["code"] == "unknown_route" and error["type"] == "invalid_request_error"
    assert upstream.stats()["total"] == 0
    assert store.mget(list(canaries)) == [v.encode() for v in canaries.values()]  # /cache/flushall never ran


def test_unlisted_methods_and_websockets_are_404(guarded) -> None:
    gateway, _, _, keys = guarded
    for method, path in [
        ("DELETE", "/v1/chat/completions"),
        ("PUT", "/admin/keys"),
        ("OPTIONS", "/health/liveness"),
        ("GET", "/v1/realtime"),
        ("POST", "/chat/completions"),
        ("POST", "/v1/responses/compact"),
        ("PUT", "/v1/responses/resp_1"),
    ]:
        response = httpx.request(method, gateway.url + path, headers=gateway.headers(keys["master"]), timeout=30)
        assert response.status_code == 404, (method, path, response.text)


def test_answers_carry_a_request_id_and_never_describe_the_backends(guarded) -> None:
    gateway, upstream, _, keys = guarded
    response = gateway.chat(keys["client"], "phi-3-mini")
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    leaked = [h for h in response.headers if h.startswith("llm_provider-") or h == "x-litellm-model-api-base"]
    assert leaked == [] and upstream.root not in str(response.headers)


def test_metrics_token_guards_metrics(gateway_factory, fake_upstream) -> None:
    token = "metrics-" + "t" * 24
    gateway = gateway_factory(fake_upstream.url, env={"HXP_METRICS_TOKEN": token})
    url = f"{gateway.url}/metrics"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {gateway.create_key()}"}, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    assert httpx.get(url, headers=gateway.headers(), timeout=30).status_code == 200


def test_our_api_description_lists_only_our_surface(gateway_factory, fake_upstream, gateway) -> None:
    assert httpx.get(f"{gateway.url}/openapi.json", timeout=30).status_code == 404  # off by default
    described = gateway_factory(fake_upstream.url, env={"HXP_OPENAPI": "true"})
    document = httpx.get(f"{described.url}/openapi.json", timeout=60).json()
    table = route_table.table()
    paths = document["paths"]
    assert {
        "/v1/chat/completions",
        "/v1/embeddings",
        "/admin/keys",
        "/v1/vector/collections/{collection}/search",
    } <= set(paths)
    for path, operations in paths.items():
        for method in operations:
            route = table.match(method.upper(), path).route
            assert route is not None, f"{method} {path} is described but not served"
            assert ("security" in operations[method]) == (route.access != "public")
    assert not any(p.startswith(("/key/", "/ui", "/cache", "/model/", "/spend")) for p in paths)


def test_a_websocket_never_reaches_the_app() -> None:
    import asyncio

    from hxp.gateway.boundary import Boundary

    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope)

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    asyncio.run(Boundary(app)({"type": "websocket", "path": "/v1/realtime", "headers": []}, receive, send))
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
