"""The traffic data and the user classes derived from the catalogue."""

import random
from collections import Counter

import pytest
import yaml
from pydantic import ValidationError

from hxp.core import catalogue, traffic
from hxp.loadtest.keys import gateway_root
from hxp.loadtest.plan import concurrency, models_under_test, users_needed


@pytest.fixture(scope="module")
def data() -> traffic.Traffic:
    return traffic.load()


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_every_chat_request_fits_its_model_and_mixes_streaming_and_lengths(data, profile):
    rng = random.Random(7)
    for model in catalogue.load(profile=profile).chat_models:
        workload = data.workload_for(model)
        bodies = [traffic.chat_request(data, workload, model, rng) for _ in range(300)]
        assert {b["model"] for b in bodies} == {model.name}
        streamed = sum(bool(b.get("stream")) for b in bodies)
        assert 0 < streamed < len(bodies)
        sizes = Counter(len(str(b["messages"])) > 1500 for b in bodies)
        assert sizes[True] and sizes[False]  # long and short prompts
        for b in bodies:
            assert b["messages"][-1]["role"] == "user"
            assert 1 <= b["max_tokens"] <= workload.max_tokens[1]
            prompt_tokens = sum(len(m["content"]) for m in b["messages"]) // traffic.CHARS_PER_TOKEN
            assert prompt_tokens + b["max_tokens"] <= model.max_model_len


def test_workloads_follow_the_catalogue_descriptions(data):
    cat = catalogue.load()
    chosen = {m.name: data.workload_for(m).name for m in cat.chat_models}
    assert set(chosen.values()) == {"reasoning", "dialogue", "quick"}
    for model in cat.chat_models:
        workload = data.workload_for(model)
        assert (not workload.match) or any(w in model.description.lower() for w in workload.match)


def test_max_tokens_is_clamped_to_the_context(data):
    model = catalogue.load().chat_models[0]
    tight = catalogue.Model(
        model.name,
        model.description,
        model.port,
        model.task,
        model.api,
        model.deployment.model_copy(update={"vllm": model.deployment.vllm.model_copy(update={"max_model_len": 600})}),
        model.profile,
    )
    reasoning = next(w for w in data.workloads if w.name == "reasoning")
    rng = random.Random(1)
    for _ in range(100):
        body = traffic.chat_request(data, reasoning, tight, rng)
        prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // traffic.CHARS_PER_TOKEN
        assert 1 <= body["max_tokens"] and prompt_tokens + body["max_tokens"] <= 600 or body["max_tokens"] == 1


def test_embedding_requests_are_batches_of_known_texts(data):
    model = catalogue.load().embedding_models[0]
    rng = random.Random(3)
    sizes = set()
    for _ in range(100):
        body = traffic.embedding_request(data, model, rng)
        assert set(body["input"]) <= set(data.embeddings.texts)
        sizes.add(len(body["input"]))
    assert min(sizes) == data.embeddings.batch[0] and max(sizes) == data.embeddings.batch[1]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["workloads"][0].pop("match"), "exactly one workload must have no `match`"),
        (lambda d: d["workloads"][0]["long"].append({"document": "nope", "ask": "?"}), "unknown document 'nope'"),
        (lambda d: d["workloads"][0]["short"].append(["user turn", "assistant turn"]), "must end with a user turn"),
        (lambda d: d["workloads"][0].update(max_tokens=[10, 5]), "1 <= min <= max"),
        (lambda d: d["embeddings"].update(batch=[0, 4]), "1 <= min <= max"),
    ],
)
def test_invalid_traffic_is_rejected_with_a_reason(tmp_path, change, message):
    raw = yaml.safe_load(traffic.DEFAULT_PATH.read_text())
    change(raw)
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("`", ".")):
        traffic.load(path)


def test_users_follow_littles_law_from_the_targets():
    cat = catalogue.load(profile="gpu")
    for model in cat.models:
        t = model.targets
        assert concurrency(model) >= t.throughput_rps * t.avg_latency_ms / 1000 > concurrency(model) - 1
    assert concurrency(next(m for m in cat.models if m.targets.throughput_rps == 10)) == 20  # 10 req/s at 2 s
    assert users_needed(cat.models) == sum(concurrency(m) for m in cat.models)


def test_models_under_test_can_be_narrowed_by_name(monkeypatch):
    cat = catalogue.load()
    assert models_under_test(cat, "") == cat.models
    first, last = cat.names[0], cat.names[-1]
    assert [m.name for m in models_under_test(cat, f" {last}, {first} ")] == [first, last]
    monkeypatch.setenv("HXP_LOADTEST_MODELS", last)
    assert [m.name for m in models_under_test(cat)] == [last]
    with pytest.raises(catalogue.CatalogueError, match="not in the catalogue: nope"):
        models_under_test(cat, "nope")


def test_gateway_root_accepts_the_api_url_too():
    assert gateway_root("http://h:8000/v1/") == gateway_root("http://h:8000") == "http://h:8000"
