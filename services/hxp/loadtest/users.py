"""Locust users: one class per catalogue model, built from the catalogue and the traffic data.

Each simulated user is one client sending requests back to back through the
gateway's OpenAI API. A class's weight is the concurrency its model needs
(hxp.loadtest.plan), so `--users` splits across models in proportion to the
load each must carry. Importing this module imports Locust, which
monkey-patches the process with gevent: only the locustfile should.
Every request reports ``context["model"]``; streamed ones also
``context["ttft_ms"]`` (time to the first content token). Under a compared profile each model
also has a twin class sending the same requests to its engine directly (``direct``), reported
as ``<model> (direct)``.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

from locust import HttpUser, constant, task
from requests import RequestException

from hxp.core.catalogue import Model
from hxp.core.traffic import Traffic, Workload, chat_request, embedding_request
from hxp.loadtest.keys import gateway_root
from hxp.loadtest.plan import concurrency
from hxp.loadtest.verdict import direct_name


class ModelUser(HttpUser):
    """Requests for one model; concrete classes are made by :func:`user_classes`."""

    abstract = True
    wait_time = constant(0)
    model: Model
    traffic: Traffic
    api_key: str = ""
    engine_url: str = ""  # the model's engine (…/v1), for requests sent to it directly, not through the gateway

    @property
    def label(self) -> str:
        """The name the requests are recorded and reported under."""
        return direct_name(self.model.name) if self.engine_url else self.model.name

    def on_start(self) -> None:
        self.rng = random.Random()
        self.api = self.engine_url or gateway_root(self.host or "") + "/v1"
        if self.api_key:
            self.client.headers["Authorization"] = f"Bearer {self.api_key}"

    def context(self) -> dict[str, Any]:
        return {"model": self.label}

    def _post(self, path: str, body: dict[str, Any], kind: str, **kwargs: Any) -> Any:
        """POST to the gateway, reported to Locust as ``kind`` under the model's name."""
        resp = self.client.post(
            f"{self.api}{path}",
            json=body,
            name=self.label,
            catch_response=True,
            timeout=self.model.api.timeout_s,
            context={},
            **kwargs,
        )
        # locust annotates request_meta as a Mapping, but it is the dict it builds and itself writes to
        resp.request_meta["request_type"] = kind  # type: ignore[index]
        return resp


class ChatUser(ModelUser):
    """Chat completions from the model's workload, streamed or not."""

    abstract = True
    workload: Workload

    @task
    def chat(self) -> None:
        body = chat_request(self.traffic, self.workload, self.model, self.rng)
        if body.get("stream"):
            self._stream(body)
            return
        with self._post("/chat/completions", body, "chat") as resp:
            _settle(resp, _http_problem(resp) or _chat_problem(resp))

    def _stream(self, body: dict[str, Any]) -> None:
        start = time.perf_counter()
        with self._post("/chat/completions", body, "chat-stream", stream=True) as resp:
            problem, ttft_ms, size = _http_problem(resp), None, 0
            if problem is None:
                problem = "stream ended without [DONE]"
                try:
                    for line in resp.iter_lines():
                        size += len(line)
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            problem = None
                            break
                        event = json.loads(data)
                        if "error" in event:
                            problem = f"stream error: {str(event['error'])[:200]}"
                            break
                        if ttft_ms is None and any(
                            (c.get("delta") or {}).get("content") for c in event.get("choices") or []
                        ):
                            ttft_ms = (time.perf_counter() - start) * 1000
                except (RequestException, ValueError) as err:
                    problem = f"stream broken: {err}"
            resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            resp.request_meta["response_length"] = size
            resp.request_meta["context"]["ttft_ms"] = ttft_ms
            _settle(resp, problem)


class EmbeddingUser(ModelUser):
    """Embedding batches, as a retrieval pipeline sends them."""

    abstract = True

    @task
    def embed(self) -> None:
        body = embedding_request(self.traffic, self.model, self.rng)
        with self._post("/embeddings", body, "embeddings") as resp:
            problem = _http_problem(resp)
            if problem is None:
                data = _json(resp).get("data")
                if not isinstance(data, list) or len(data) != len(body["input"]):
                    problem = f"expected {len(body['input'])} embeddings, got {str(data)[:100]}"
            _settle(resp, problem)


def _settle(resp: Any, problem: str | None) -> None:
    """Report the request to Locust as failed with ``problem``, or as a success."""
    if problem:
        resp.failure(problem)
    else:
        resp.success()


def _http_problem(resp: Any) -> str | None:
    if resp.status_code == 200:
        return None
    if resp.status_code == 0:
        return f"connection failed: {resp.error}"
    return f"HTTP {resp.status_code}: {resp.text[:200]}"


def _json(resp: Any) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _chat_problem(resp: Any) -> str | None:
    choices = _json(resp).get("choices")
    if not choices or not isinstance((choices[0].get("message") or {}).get("content"), str):
        return f"no chat completion in the answer: {resp.text[:200]}"
    return None


def class_name(model: Model) -> str:
    """A Python class name for a model: ``mixtral-8x7b`` -> ``Mixtral8x7bUser``."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", model.name) if part) + "User"


def user_classes(
    models: list[Model], traffic: Traffic, host: str, engines: dict[str, str] | None = None
) -> list[type[ModelUser]]:
    """One concrete Locust user class per model (chat or embedding), and for each model in ``engines`` (its
    engine's base URL) a twin sending the same requests there directly; set ``api_key`` on the gateway's
    classes before a run."""
    classes: list[type[ModelUser]] = []
    for model in models:
        attrs: dict[str, Any] = {
            "model": model,
            "traffic": traffic,
            "host": host,
            "weight": concurrency(model),
            "__module__": __name__,
        }
        if model.task == "chat":
            attrs["workload"] = traffic.workload_for(model)
            base: type[ModelUser] = ChatUser
        else:
            base = EmbeddingUser
        classes.append(type(class_name(model), (base,), attrs))
        if engines and model.name in engines:
            twin = {**attrs, "engine_url": engines[model.name]}
            classes.append(type(class_name(model).removesuffix("User") + "DirectUser", (base,), twin))
    return classes
