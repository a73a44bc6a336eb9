"""compose.yaml / compose.gpu.yaml / compose.dev.yaml: derived from the catalogue and valid for the real Docker
Compose v2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hxp.cli import main
from hxp.core import catalogue
from hxp.core.paths import PROJECT_ROOT
from hxp.deploy import compose, envfiles
from hxp.model import command

COMPOSE_BIN = next(Path(PROJECT_ROOT / ".venv/lib").glob("python3*/site-packages/compose/docker-compose"))
# The file combinations users run (compose.gpu.yaml and compose.dev.yaml are overrides of compose.yaml), with
# the optional profile.
SERVER, GPU, DEV = ["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"], ["compose.yaml", "compose.dev.yaml"]
COMBINATIONS = [
    (["compose.yaml"], []),
    (["compose.yaml"], ["loadtest"]),
    (["compose.yaml", "compose.gpu.yaml"], []),
    (["compose.yaml", "compose.dev.yaml"], []),
    (["compose.yaml", "compose.dev.yaml"], ["loadtest"]),
    (["compose.yaml", "compose.dev.yaml"], ["loadtest", compose.SEPARATE_PROFILE]),
]
STATEFUL = {"postgres": "/var/lib/postgresql/data", "redis": "/data", "qdrant": "/qdrant/storage"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checked-in compose files with env files made from the examples, as a user has them after `make env`."""
    root = tmp_path_factory.mktemp("stack")
    for name in ("compose.yaml", "compose.gpu.yaml", "compose.dev.yaml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    shutil.copytree(PROJECT_ROOT / "env", root / "env", ignore=shutil.ignore_patterns("*.env"))
    envfiles.create(root / "env")
    for folder in ("services", "prometheus", "grafana", "loadtests", "requirements"):
        (root / folder).symlink_to(PROJECT_ROOT / folder)
    return root


def run_compose(root: Path, files: list[str], profiles: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [str(COMPOSE_BIN), "--project-directory", str(root), "--project-name", "hxp"]
    cmd += [a for f in files for a in ("-f", str(root / f))] + [a for p in profiles for a in ("--profile", p)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=root, timeout=60)


def resolved(root: Path, files: list[str], profiles: list[str]) -> dict:
    done = run_compose(root, files, profiles, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- derived from the catalogue --------------------------------------------------------


def test_checked_in_compose_files_match_the_catalogue() -> None:
    assert compose.stale() == [], "run `hxp compose generate` and commit compose*.yaml"


def test_check_mode_fails_on_drift_and_generate_repairs_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compose", "generate", "--out", str(tmp_path)]) == 0
    assert main(["compose", "generate", "--check", "--out", str(tmp_path)]) == 0
    raw = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text())
    raw["models"][2]["port"] = 11499
    changed = tmp_path / "models.yaml"
    changed.write_text(yaml.safe_dump(raw))
    assert main(["compose", "generate", "--check", "--out", str(tmp_path), "--catalogue", str(changed)]) == 1
    assert "compose.yaml differs from the catalogue" in capsys.readouterr().err
    assert main(["compose", "generate", "--out", str(tmp_path), "--catalogue", str(changed)]) == 0
    assert "11499:11499" in (tmp_path / "compose.yaml").read_text()


def test_a_new_catalogue_entry_becomes_a_service(tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text())
    new = json.loads(json.dumps(raw["models"][3]))  # a copy of phi-3-mini, on GPU 6 and on the server's core 15
    new.update(name="qwen-7b", port=11410)
    new["profiles"]["gpu"].update(source="Qwen/Qwen2.5-7B-Instruct", devices=[6])
    new["profiles"]["server"].update(
        source="Qwen/Qwen2.5-0.5B-Instruct-AWQ",
        cpus="15",
        weights_gb=0.46,
        kv_cache_gib=1,
        vllm={"max_model_len": 2048, "dtype": "bfloat16"},
    )
    del new["profiles"]["server-256"]
    raw["models"][3]["profiles"]["server"]["cpus"] = "13-14"
    raw["models"].append(new)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    files = compose.generate(path)
    server = compose.load_yaml(files["compose.yaml"])["services"]["qwen-7b"]
    assert server["ports"] == ["${HXP_PUBLISH_ADDRESS:-127.0.0.1}:11410:11410"]
    assert server["cpuset"] == "15" and server["environment"]["VLLM_CPU_OMP_THREADS_BIND"] == "15"
    assert server["command"][:2] == ["serve", "Qwen/Qwen2.5-0.5B-Instruct-AWQ"]  # `vllm serve MODEL`
    gpu = compose.load_yaml(files["compose.gpu.yaml"])["services"]["qwen-7b"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["6"]
    assert gpu["command"][:2] == ["serve", "Qwen/Qwen2.5-7B-Instruct"]
    dev = compose.load_yaml(files["compose.dev.yaml"])["services"]["qwen-7b"]
    assert dev["command"][0] == "qwen-7b"


@pytest.mark.parametrize(
    "file,profile,image",
    [("compose.yaml", "server", "hxp/model:0.1.0"), ("compose.gpu.yaml", "gpu", "vllm/vllm-openai:v0.32.0")],
)
def test_engines_run_the_native_runners_command(file: str, profile: str, image: str) -> None:
    cat = catalogue.load(profile=profile)
    services = compose.load_yaml((PROJECT_ROOT / file).read_text())["services"]
    for model in cat.models:
        argv = command.engine_command(
            [model], cat.profile_settings, host="0.0.0.0", chat_templates=compose.CONTAINER_CHAT_TEMPLATES
        ).argv
        service = services[model.name]
        assert service["entrypoint"][1:] == argv[1:3]  # -m vllm.entrypoints.cli.main (`vllm`)
        assert service["command"] == argv[3:]
        assert service["image"] == image


@pytest.mark.parametrize("file,profile", [("compose.yaml", "server"), ("compose.gpu.yaml", "gpu")])
def test_engines_find_their_tool_chat_templates_in_the_container(file: str, profile: str) -> None:
    """The chat template a model's `tools` names is mounted from the repository where --chat-template points."""
    services = compose.load_yaml((PROJECT_ROOT / file).read_text())["services"]
    templated = {name: s["command"] for name, s in services.items() if "--chat-template" in s.get("command", [])}
    models = catalogue.load(profile=profile).models
    assert set(templated) == {m.name for m in models if m.tools and m.tools.chat_template}
    for name, argv in templated.items():
        path = Path(argv[argv.index("--chat-template") + 1])
        mounts = {target: source for source, target, *_ in (v.split(":") for v in services[name]["volumes"])}
        assert (PROJECT_ROOT / mounts[str(path.parent)] / path.name).is_file(), name


# --- validated by the real Docker Compose v2 ---------------------------------------------


def test_compose_binary_is_the_real_one() -> None:
    done = subprocess.run([str(COMPOSE_BIN), "version"], capture_output=True, text=True)
    assert re.search(r"Docker Compose version v2\.\d+", done.stdout), done.stdout


@pytest.mark.parametrize("files,profiles", COMBINATIONS, ids=lambda v: "+".join(v) or "-")
def test_compose_config_is_valid(project: Path, files: list[str], profiles: list[str]) -> None:
    done = run_compose(project, files, profiles, "config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_config_rejects_a_broken_file(project: Path, tmp_path: Path) -> None:
    """The validation can fail: an unknown key, or a missing env file, is reported."""
    broken = yaml.safe_load((project / "compose.yaml").read_text())
    broken["services"]["gateway"]["restart_policy"] = "always"
    (project / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert run_compose(project, ["broken.yaml"], [], "config", "-q").returncode != 0
    (project / "env" / "redis.env").rename(project / "env" / "redis.env.moved")
    try:
        done = run_compose(project, ["compose.yaml"], [], "config", "-q")
        assert done.returncode != 0 and "redis.env" in done.stderr
    finally:
        (project / "env" / "redis.env.moved").rename(project / "env" / "redis.env")


@pytest.mark.parametrize("files,profiles", COMBINATIONS, ids=lambda v: "+".join(v) or "-")
def test_every_service_is_healthchecked_pinned_and_restarted(
    project: Path, files: list[str], profiles: list[str]
) -> None:
    services = resolved(project, files, profiles)["services"]
    for name, service in services.items():
        health = service.get("healthcheck") or {}
        assert health.get("test") and not health.get("disable"), f"{name}: no healthcheck"
        assert service.get("restart") in ("always", "unless-stopped"), f"{name}: no restart policy"
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert "build" in service or (tag and tag != "latest"), f"{name}: image {image!r} is not pinned"
        gpu = (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices")
        if not gpu:  # GPU engines are sized by their GPU memory; everything else has a memory limit
            assert service["deploy"]["resources"]["limits"]["memory"], f"{name}: no memory limit"


def test_gpu_stack_follows_the_catalogue(project: Path) -> None:
    cat = catalogue.load(profile="gpu")
    config = resolved(project, GPU, [])
    services = config["services"]
    for model in cat.models:
        service = services[model.name]
        assert [p["target"] for p in service["ports"]] == [model.port]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [
            {"driver": "nvidia", "device_ids": [str(d) for d in model.deployment.devices], "capabilities": ["gpu"]}
        ]
        assert any(v["source"] == "model-cache" for v in service["volumes"])
        assert "HF_TOKEN" in service["environment"]
        assert not any(k.startswith("VLLM_CPU_") for k in service["environment"]), "no CPU engine settings"
        assert "build" not in service and "cpuset" not in service and service["ipc"] == "host"
        assert f":{model.port}/health" in " ".join(service["healthcheck"]["test"])
        assert service["healthcheck"]["start_period"] in ("30m0s",)
    assert services["gateway"]["environment"]["HXP_PROFILE"] == "gpu"
    assert not any("cpuset" in s for s in services.values()), "the server's CPU sets do not apply to a GPU server"


def test_server_stack_follows_the_plan(project: Path) -> None:
    """compose.yaml: one engine per model of the server profile on its own cores, with its KV cache, thread
    binding and memory limit; the gateway and the stores on the profile's gateway cores."""
    cat = catalogue.load(profile="server")
    services = resolved(project, SERVER, [])["services"]
    taken: set[int] = set()
    for model in cat.models:
        dep, service = model.deployment, services[model.name]
        assert service["build"]["dockerfile"] == "services/model/Dockerfile", "vLLM's CPU build, as the dev stack's"
        assert [p["target"] for p in service["ports"]] == [model.port]
        cpus = set(catalogue.cpu_list(service["cpuset"]))
        assert service["cpuset"] == dep.cpus and not cpus & taken, model.name
        taken |= cpus
        env = service["environment"]
        assert env["VLLM_CPU_KVCACHE_SPACE"] == str(dep.kv_cache_gib)
        assert set(catalogue.cpu_list(env["VLLM_CPU_OMP_THREADS_BIND"])) <= cpus
        assert env["HF_HUB_OFFLINE"] == "0" and "HF_TOKEN" in env and env["HXP_PROFILE"] == "server"
        assert (
            int(service["deploy"]["resources"]["limits"]["memory"])
            >= dep.memory_gb(cat.profile_settings.engine_runtime_gb) * 1e9
        )
        assert "reservations" not in service["deploy"]["resources"], "no GPU on the requirements' server"
        assert any(v["source"] == "model-cache" for v in service["volumes"])
        assert service["command"][1] == dep.source
    system = catalogue.cpu_list(cat.profile_settings.gateway_cpus or "")
    for name in ("gateway", "postgres", "redis", "qdrant", "node-exporter"):
        assert catalogue.cpu_list(services[name]["cpuset"]) == system, name
    assert not taken & set(system)
    assert services["gateway"]["environment"]["HXP_PROFILE"] == "server"


def test_gateway_and_stores(project: Path) -> None:
    services = resolved(project, ["compose.yaml"], [])["services"]
    gateway = services["gateway"]
    assert gateway["build"]["dockerfile"] == "services/gateway/Dockerfile"
    assert [p["published"] for p in gateway["ports"]] == ["8000"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    env = gateway["environment"]
    assert env["HXP_BACKEND_URL_TEMPLATE"] == "http://{name}:{port}/v1"
    assert env["QDRANT_URL"] == "http://qdrant:6333"
    assert env["DATABASE_URL"].startswith("postgresql://hxp:") and env["DATABASE_URL"].endswith("@postgres:5432/hxp")
    password = resolved_env(project, "postgres.env")["POSTGRES_PASSWORD"]
    assert f":{password}@" in env["DATABASE_URL"], "the gateway's URL must carry PostgreSQL's password"
    assert env["REDIS_URL"] == f"redis://:{resolved_env(project, 'redis.env')['REDIS_PASSWORD']}@redis:6379/0"
    assert env["HXP_MASTER_KEY"].startswith("sk-hxp-")
    for name, path in STATEFUL.items():
        mounts = services[name]["volumes"]
        assert any(m["type"] == "volume" and m["target"] == path for m in mounts), f"{name}: no named volume"
    assert "--requirepass" in " ".join(services["redis"]["command"])
    for exporter in ("node-exporter", "postgres-exporter", "redis-exporter"):
        assert exporter in services


def aliases(service: dict) -> list[str]:
    """The other names a service answers to on the stack's network."""
    return ((service.get("networks") or {}).get("default") or {}).get("aliases") or []


def resolved_env(root: Path, name: str) -> dict[str, str]:
    return envfiles.assignments((root / "env" / name).read_text())


def test_dev_stack_shares_engines_like_make_run_on_disjoint_cpus(project: Path) -> None:
    """By default one engine per group of models with the same deployment (as `make run`): the chat engine
    answers the four chat names through network aliases, each task on its own CPU set; the catalogue port of
    the group's first model is published."""
    cat = catalogue.load(profile="cpu")
    services = resolved(project, ["compose.yaml", "compose.dev.yaml"], ["loadtest"])["services"]
    engines = {name: s for name, s in services.items() if s.get("entrypoint") == ["hxp", "model", "serve"]}
    groups = command.engine_groups(cat.models)
    assert len(engines) == len(groups) == 2
    for group in groups:
        names = [m.name for m in group]
        engine = engines["chat-engine" if len(group) > 1 else names[0]]
        assert engine["command"] == [
            *names,
            "--host",
            "0.0.0.0",
            "--port",
            str(compose.DEV_ENGINE_PORT),
            "--enforce-eager",
        ]
        assert engine["build"]["dockerfile"] == "services/model/Dockerfile"
        assert "reservations" not in engine["deploy"]["resources"], "a CPU engine must not reserve a GPU"
        assert engine["deploy"]["resources"]["limits"]["memory"] == str(int(group[0].targets.memory_gb * 2**30))
        assert [(p["published"], p["target"]) for p in engine["ports"]] == [
            (str(group[0].port), compose.DEV_ENGINE_PORT)
        ]
        assert set(names) <= {"chat-engine" if len(group) > 1 else names[0], *aliases(engine)}
        assert engine["shm_size"] and "ipc" not in engine and not engine.get("volumes")
    cpus = [set(e["cpuset"].split(",")) for e in engines.values()]
    assert all(cpus) and not cpus[0] & cpus[1], "the two engines must not share a CPU"
    gateway = services["gateway"]["environment"]
    assert gateway["HXP_PROFILE"] == "cpu" and gateway["HXP_BACKEND_URL_TEMPLATE"] == compose.DEV_BACKEND_URL_TEMPLATE
    for engine in engines.values():
        assert not any(k.startswith("VLLM_CPU_") for k in engine["environment"]), "the server's engine settings leak"
    assert "cpuset" not in services["gateway"] and "cpuset" not in services["postgres"]


def test_one_engine_per_model_is_a_profile(project: Path) -> None:
    """--profile separate-engines with HXP_SHARED_ENGINES=0 (make dev DEV_ENGINES=separate): every model its
    own engine on its catalogue port, the shared engine scaled to nothing."""
    cat = catalogue.load(profile="cpu")
    done = subprocess.run(
        [
            str(COMPOSE_BIN),
            "--project-directory",
            str(project),
            "-p",
            "hxp",
            "-f",
            str(project / "compose.yaml"),
            "-f",
            str(project / "compose.dev.yaml"),
            "--profile",
            compose.SEPARATE_PROFILE,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HXP_SHARED_ENGINES": "0"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["chat-engine"]["scale"] == 0
    for model in cat.models:
        engine = services[model.name]
        assert engine["command"][0] == model.name and engine["command"][1] == "--host"
        assert [p["published"] for p in engine["ports"]] == [str(model.port)]


def test_cpu_sets_split_the_machine_between_the_tasks_as_the_native_runner_does() -> None:
    from hxp.model.placement import place

    assert compose.cpu_sets([0, 1]) == {"chat": "1", "embedding": "0"}
    assert compose.cpu_sets(range(8)) == {"chat": "3-7", "embedding": "1-2"}  # core 0 left to the gateway
    assert compose.cpu_sets([0]) == {"chat": "0", "embedding": "0"}, "one CPU: shared, not empty"
    for cpus in ([0, 1], range(8), [0, 2, 4, 6, 7]):
        engines = place(cpus, ["chat", "embedding"]).engines
        assert compose.cpu_sets(cpus) == {
            "chat": compose._ranges(list(engines[0])),
            "embedding": compose._ranges(list(engines[1])),
        }
    assert main(["compose", "cpus"]) == 0


def test_dev_stack_adds_monitoring_and_the_load_test_ui(project: Path) -> None:
    services = resolved(project, ["compose.yaml", "compose.dev.yaml"], ["loadtest"])["services"]
    for name in ("prometheus", "alertmanager", "grafana", "locust"):
        assert name in services
    mounts = {m["target"]: m["source"] for m in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus"] == str(project / "prometheus")
    binds = [
        m
        for s in services.values()
        for m in s.get("volumes") or []
        if m["type"] == "bind" and m["source"].startswith(str(project))
    ]
    for bind in binds:  # what the dev stack mounts from the checkout exists there
        assert Path(bind["source"]).exists(), f"{bind['source']} is mounted but missing"
    config = services["prometheus"]["command"][0].split("=", 1)[1]
    assert (project / "prometheus" / Path(config).relative_to("/etc/prometheus")).is_file()
    providers = yaml.safe_load((project / "grafana/provisioning/dashboards/hxp.yml").read_text())["providers"]
    grafana_mounts = {m["target"] for m in services["grafana"]["volumes"]}
    assert {p["options"]["path"] for p in providers} <= grafana_mounts, "Grafana's dashboards are not mounted"
    assert services["locust"]["build"]["target"] == "loadtest"
    without = resolved(project, ["compose.yaml", "compose.dev.yaml"], [])["services"]
    assert "locust" not in without, "Locust runs only with --profile loadtest"


def test_dev_prometheus_scrapes_services_of_the_stack(project: Path) -> None:
    """prometheus/prometheus.yml (hxp.monitoring) and the compose services agree on names."""
    services = resolved(project, ["compose.yaml", "compose.dev.yaml"], [])["services"]
    names = set(services) | {alias for service in services.values() for alias in aliases(service)}
    config = yaml.safe_load((project / "prometheus" / "prometheus.yml").read_text())
    hosts = {
        target.rsplit(":", 1)[0]
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    hosts |= {
        t.rsplit(":", 1)[0]
        for a in config["alerting"]["alertmanagers"]
        for g in a["static_configs"]
        for t in g["targets"]
    }
    assert hosts and hosts <= names, f"scraped but not in the stack: {sorted(hosts - names)}"


def test_a_fresh_clone_without_make_env_is_told_to_run_it(tmp_path: Path) -> None:
    """No env files and no .env yet: Compose stops with a message that names `make env`."""
    for name in ("compose.yaml", "compose.gpu.yaml", "compose.dev.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    env = {k: v for k, v in os.environ.items() if k != envfiles.ENV_DIR_VARIABLE}
    for files in (SERVER, GPU, DEV):
        done = subprocess.run(
            [
                str(COMPOSE_BIN),
                "--project-directory",
                str(tmp_path),
                "-p",
                "hxp",
                *[a for f in files for a in ("-f", str(tmp_path / f))],
                "up",
                "--no-start",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode != 0 and "make env" in done.stderr, done.stderr
