"""The traffic the models get, as data: workloads read from loadtests/traffic.yaml and the requests they
produce (the load tests send them; `hxp plan` sizes its estimates by them).

A chat model's workload is chosen from its catalogue description, so no model
is named in the traffic data or in the locustfile.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from hxp.core.catalogue import Model
from hxp.core.paths import PROJECT_ROOT

DEFAULT_PATH = PROJECT_ROOT / "loadtests" / "traffic.yaml"
CHARS_PER_TOKEN = 3  # conservative prompt-size estimate, so prompt + max_tokens fits the context
CONTEXT_MARGIN = 32  # tokens kept free for the chat template

Message = dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LongPrompt(_Strict):
    document: str
    ask: str


def _check_range(value: tuple[int, int]) -> tuple[int, int]:
    if not 1 <= value[0] <= value[1]:
        raise ValueError("must be [min, max] with 1 <= min <= max")
    return value


Range = Annotated[tuple[int, int], AfterValidator(_check_range)]  # an inclusive [min, max] of positive integers


class Workload(_Strict):
    """Chat traffic typical of one use (reasoning, dialogue, quick answers)."""

    name: str
    match: list[str] = []
    system: str = ""
    max_tokens: Range
    temperature: float = Field(gt=0, le=2)  # > 0: the gateway caches temperature-0 answers only
    stream_share: float = Field(ge=0, le=1)
    long_share: float = Field(ge=0, le=1)
    short: list[str | list[str]] = Field(min_length=1)
    long: list[LongPrompt] = []

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if self.long_share and not self.long:
            raise ValueError(f"workload '{self.name}': long_share > 0 needs long prompts")
        for turns in self.short:
            if isinstance(turns, list) and len(turns) % 2 == 0:
                raise ValueError(f"workload '{self.name}': a conversation must end with a user turn")
        return self


class EmbeddingWorkload(_Strict):
    batch: Range
    texts: list[str] = Field(min_length=1)


class ProfileTraffic(_Strict):
    """How one catalogue profile adjusts the traffic (slow CPU engines ask for shorter answers)."""

    max_tokens_scale: float = Field(default=1.0, gt=0, le=1)


class Traffic(_Strict):
    """The whole traffic file."""

    workloads: list[Workload] = Field(min_length=1)
    profiles: dict[str, ProfileTraffic] = {}
    embeddings: EmbeddingWorkload
    documents: dict[str, str] = {}

    @model_validator(mode="after")
    def _check(self) -> Traffic:
        defaults = [w.name for w in self.workloads if not w.match]
        if len(defaults) != 1:
            raise ValueError(f"exactly one workload must have no `match` (the default), found {defaults}")
        for w in self.workloads:
            for p in w.long:
                if p.document not in self.documents:
                    raise ValueError(f"workload '{w.name}': unknown document '{p.document}'")
        return self

    def workload_for(self, model: Model) -> Workload:
        """The first workload whose match words occur in the model's description, else the default."""
        text = model.description.lower()
        for w in self.workloads:
            if w.match and any(word.lower() in text for word in w.match):
                return w
        return next(w for w in self.workloads if not w.match)


def load(path: str | Path | None = None) -> Traffic:
    """Read the traffic file (HXP_LOADTEST_TRAFFIC or loadtests/traffic.yaml)."""
    file = Path(path or os.environ.get("HXP_LOADTEST_TRAFFIC") or DEFAULT_PATH)
    return Traffic.model_validate(yaml.safe_load(file.read_text()))


def chat_request(traffic: Traffic, workload: Workload, model: Model, rng: random.Random) -> dict[str, Any]:
    """One OpenAI chat-completions body for ``model``, drawn from its workload."""
    messages: list[Message] = [{"role": "system", "content": workload.system}] if workload.system else []
    if workload.long and rng.random() < workload.long_share:
        prompt = rng.choice(workload.long)
        messages.append({"role": "user", "content": f"{traffic.documents[prompt.document]}\n\n{prompt.ask}"})
    else:
        turns = rng.choice(workload.short)
        for i, text in enumerate([turns] if isinstance(turns, str) else turns):
            messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    prompt_tokens = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN + CONTEXT_MARGIN
    scale = traffic.profiles.get(model.profile, ProfileTraffic()).max_tokens_scale
    low, high = (max(1, round(n * scale)) for n in workload.max_tokens)
    max_tokens = min(rng.randint(low, high), max(1, model.max_model_len - prompt_tokens))
    body: dict[str, Any] = {
        "model": model.name,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": workload.temperature,
    }
    if rng.random() < workload.stream_share:
        body["stream"] = True
    return body


def embedding_request(traffic: Traffic, model: Model, rng: random.Random) -> dict[str, Any]:
    """One OpenAI embeddings body for ``model``: a batch of texts."""
    size = min(rng.randint(*traffic.embeddings.batch), len(traffic.embeddings.texts))
    return {"model": model.name, "input": rng.sample(traffic.embeddings.texts, size)}


def mean_request(traffic: Traffic, model: Model) -> tuple[float, float]:
    """(prompt tokens, tokens generated) of ``model``'s average request as :func:`chat_request` and
    :func:`embedding_request` draw them (an embedding request's texts are its prompt; it generates none)."""
    if model.task == "embedding":
        texts = traffic.embeddings.texts
        batch = sum(traffic.embeddings.batch) / 2
        return batch * sum(len(t) for t in texts) / len(texts) / CHARS_PER_TOKEN, 0.0
    workload = traffic.workload_for(model)
    short = [sum(map(len, [t] if isinstance(t, str) else t)) for t in workload.short]
    chars = sum(short) / len(short)
    if workload.long:
        long = sum(len(traffic.documents[p.document]) + len(p.ask) for p in workload.long) / len(workload.long)
        chars = (1 - workload.long_share) * chars + workload.long_share * long
    prompt = (len(workload.system) + chars) / CHARS_PER_TOKEN + CONTEXT_MARGIN
    scale = traffic.profiles.get(model.profile, ProfileTraffic()).max_tokens_scale
    output = sum(max(1, round(n * scale)) for n in workload.max_tokens) / 2
    return prompt, min(output, max(1.0, model.max_model_len - prompt))
