"""The rolling update's runner for the compose stack: a second container of the engine's service beside the old one.

``docker compose up -d --no-deps --no-recreate --scale SERVICE=2 SERVICE`` creates the new container from the
service's definition as compose.yaml has it now (a changed one after `hxp config apply`, the same after a model
update), leaving the old container as it is. The gateway container reaches each container by its name on the
compose network; this host by its address there (the checks, the drain). When the update is done the old
container is stopped and removed: what is left is one container of the service, made from compose.yaml's
definition (its config hash is compose's own), so a later ``docker compose up -d`` neither undoes nor redoes the
update. When it rolls back, the new container is removed and the old one serves as before. Like the
docker-rollout plugin, this needs a service without a fixed published host port or a ``container_name``: two
containers cannot share either, and the update is refused before anything starts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from hxp.core import settings
from hxp.core.catalogue import Catalogue, Model
from hxp.deploy import compose as stack_files
from hxp.deploy import running
from hxp.lifecycle import rolling
from hxp.lifecycle.plan import Plan, Refused, check_memory
from hxp.process import ServiceError

HEALTH_POLL_S = 1.0


def inspect(container: str) -> dict[str, Any]:
    return json.loads(running.docker("inspect", container))[0]


def _address(state: dict[str, Any]) -> str:
    """The container's address on its compose network (the project's default one when it has several)."""
    networks = state["NetworkSettings"]["Networks"]
    name = next((n for n in networks if n.endswith("_default")), next(iter(networks)))
    return str(networks[name]["IPAddress"])


@dataclass
class Container:
    """A container of an engine service, by its name on the compose network (``port``: the engine's, inside)."""

    id: str
    name: str
    address: str
    port: int
    started_at: str

    @classmethod
    def of(cls, container: str, port: int) -> Container:
        state = inspect(container)
        return cls(state["Id"], state["Name"].lstrip("/"), _address(state), port, state["State"]["StartedAt"])

    @property
    def url(self) -> str:
        return f"http://{self.name}:{self.port}/v1"

    @property
    def here(self) -> str:
        return f"http://{self.address}:{self.port}"

    def describe(self) -> str:
        return f"container {self.name} ({self.id[:12]}) at {self.url}"

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                logs = running.docker("logs", "--tail", "20", self.id).strip()
                raise ServiceError(f"{self.name} exited before it was healthy:\n{logs}")
            try:
                if httpx.get(f"{self.here}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} not healthy after {timeout:.0f} s")
            time.sleep(HEALTH_POLL_S)

    def alive(self) -> bool:
        """Running, and not restarted since it started (a restart policy hides a crash otherwise)."""
        try:
            state = inspect(self.id)["State"]
        except running.ComposeError:  # removed
            return False
        return bool(state["Running"]) and state["StartedAt"] == self.started_at

    def stop(self) -> None:
        running.docker("stop", "--time", str(int(rolling.STOP_GRACE_S)), self.id, timeout=rolling.STOP_GRACE_S + 60)
        running.docker("rm", "--force", self.id)


def config() -> dict[str, Any]:
    """The compose stack's configuration as `docker compose config` resolves it."""
    try:
        return dict(json.loads(running.compose("config", "--format", "json")))
    except running.ComposeError as err:
        raise Refused(f"the compose stack's configuration cannot be read: {err}") from None


def _gateway_env(resolved: dict[str, Any]) -> dict[str, str]:
    return dict(resolved["services"].get("gateway", {}).get("environment") or {})


def profile() -> str | None:
    """The profile the compose stack's gateway serves (its HXP_PROFILE)."""
    return _gateway_env(config()).get("HXP_PROFILE")


def check_plan(plan: Plan, runner: ComposeRunner, current: dict[tuple[str, ...], list[str]]) -> None:
    """Refuse a plan compose cannot apply in place: an engine service added or removed; each replacement's checks."""
    added_or_removed = plan.of("start", "stop")
    if added_or_removed:
        names = "; ".join(f"{c.action} {', '.join(c.names)}" for c in added_or_removed)
        raise Refused(
            f"{names}: under compose an engine service is added or removed with `hxp compose generate` and "
            "`docker compose up -d --remove-orphans`; apply changes the engines that stay"
        )
    for change in plan.of("replace"):
        runner.check(change.models, current[change.names])


class ComposeRunner:
    """Engines as containers of the running compose stack, selected as `docker compose` selects it (COMPOSE_FILE,
    COMPOSE_PROJECT_NAME, COMPOSE_PROFILES, HXP_ENV_DIR)."""

    by_name = True

    def __init__(self, cat: Catalogue) -> None:
        self.cat = cat
        self.config = config()
        self.template = (
            _gateway_env(self.config).get("HXP_BACKEND_URL_TEMPLATE") or settings.load().backend_url_template
        )
        self.containers: dict[str, Container] = {}  # by name: the old and new containers of this update

    def service(self, models: tuple[Model, ...]) -> str:
        """The service that runs the engine of ``models`` (named as `hxp compose generate` names it)."""
        names = {m.name for m in models}
        return next(s for s, group in stack_files.engines(self.cat).items() if {m.name for m in group} == names)

    def _running(self, service: str, port: int) -> list[Container]:
        found = [Container.of(c, port) for c in running.containers(service)]
        self.containers.update((c.name, c) for c in found)
        return found

    def check(self, models: tuple[Model, ...], old_urls: list[str]) -> None:
        service = self.service(models)
        definition = self.config["services"].get(service)
        if definition is None:
            raise Refused(f"the compose stack has no service {service} (under its profiles): `docker compose config`")
        fixed = [p["published"] for p in definition.get("ports") or [] if p.get("published")]
        if fixed or definition.get("container_name"):
            what = f"publishes host port {fixed[0]}" if fixed else f"has container_name {definition['container_name']}"
            raise Refused(
                f"service {service} {what}: a second container cannot run beside the first; publish it on a port "
                f'Docker picks (ports: !override ["127.0.0.1::{rolling.port_of(old_urls[0])}"]) or not at all'
            )
        count = len(running.containers(service))
        if count != 1:
            raise Refused(f"service {service} runs {count} containers, not one: `docker compose up -d {service}` first")
        try:
            running.docker("image", "inspect", definition["image"])
        except running.ComposeError:
            raise Refused(
                f"image {definition['image']} of service {service} is missing: `docker compose build {service}` "
                "(or pull it)"
            ) from None
        limit = ((definition.get("deploy") or {}).get("resources") or {}).get("limits", {}).get("memory")
        check_memory(models, side_by_side=True, need_gib=float(limit) / 2**30 if limit else None)

    def pin(self, models: tuple[Model, ...], urls: list[str]) -> list[str]:
        return [c.url for c in self._running(self.service(models), rolling.port_of(urls[0]))]

    def here(self, url: str) -> str:
        return self.containers[httpx.URL(url).host].here

    def start(
        self, cat: Catalogue, models: tuple[Model, ...], old_urls: list[str], options: rolling.Options
    ) -> Container:
        service, port = self.service(models), rolling.port_of(old_urls[0])
        before = set(running.containers(service))
        try:
            running.compose(
                "up", "--detach", "--no-deps", "--no-recreate", "--scale", f"{service}={len(before) + 1}", service
            )
        except running.ComposeError as err:
            raise ServiceError(str(err)) from None
        new = [c for c in running.containers(service) if c not in before]
        if len(new) != 1:
            raise ServiceError(f"docker compose started {len(new)} new containers of {service}, not one")
        container = Container.of(new[0], port)
        self.containers[container.name] = container
        return container

    def stop(self, urls: list[str]) -> None:
        for url in urls:
            self.containers[httpx.URL(url).host].stop()
