"""`hxp doctor`: the requirements' troubleshooting guide (appendix D.2) as checks, each finding with its fix.

- the engine virtualenv exists (native);
- the master key is set (and long enough);
- no catalogue port (nor the gateway's) is held by a process other than the stack's own;
- enough free memory (cpu) or GPU memory (``nvidia-smi``, cuda) for the engines not yet running;
- the prepared weights are there and match their manifest's checksums, and the quantized ones are made;
- each CPU engine's weights need no kernel this CPU's vLLM build lacks (hxp.model.kernels);
- the env files exist (compose) and hold no example or weak secret, readable by their owner only;
- the database, Redis and Qdrant answer, a refused password told apart from an unreachable host;
- the database's clock agrees with this host's;
- disk space for the weights and the usage spill, and no usage rows left waiting in the spill.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from hxp.core.catalogue import Catalogue
from hxp.core.paths import state_dir
from hxp.deploy import envfiles
from hxp.ops import probes
from hxp.ops.findings import Finding, failed, passed, skipped, warned
from hxp.ops.stack import Stack, served_names

MIN_MASTER_KEY_CHARS = 32
WEAK_SECRETS = {
    "changeme",
    "change-me",
    "password",
    "secret",
    "example",
    "admin",
    "test",
    "hxp",
    "postgres",
    "redis",
    "grafana",
    "default",
}
MIN_SECRET_CHARS = 16
SKEW_WARN_S, SKEW_FAIL_S = 1.0, 5.0
DISK_FAIL_GB, DISK_WARN_GB = 1.0, 5.0


# --- processes and ports ---------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    pid: int | None  # None: another user's process, not visible to us
    command: str
    host: str  # where to reach it (a wildcard address means loopback)


def listener(port: int) -> Listener | None:
    """The process listening on a TCP port of this host, or None."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        conns = []
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            try:
                argv = psutil.Process(conn.pid).cmdline() if conn.pid else ["unknown"]
            except psutil.Error:
                argv = ["unknown"]
            host = "127.0.0.1" if conn.laddr.ip in ("0.0.0.0", "::", "") else conn.laddr.ip
            return Listener(conn.pid, " ".join(" ".join(argv).split())[:120], host)
    import socket

    with socket.socket() as s:  # not allowed to see other users' sockets: is anything there at all?
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return Listener(None, "unknown (another user's process)", "127.0.0.1")
    return None


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _is_gateway(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/health/liveness", timeout=3).json().get("status") == "alive"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def ports(stack: Stack, client: httpx.Client) -> list[Finding]:
    names = set(stack.catalogue.names)
    wanted: dict[int, str] = {}
    for model in stack.catalogue.models:
        wanted.setdefault(model.port, f"engine of {model.name}")
    gateway = urlsplit(stack.gateways[0])
    if probes.local_url(stack.gateways[0]) and gateway.port:
        wanted[gateway.port] = "the gateway"
    findings = []
    for port, role in sorted(wanted.items()):
        check = f"port {port} ({role})"
        holder = listener(port)
        if holder is None:
            findings.append(passed(check, "free"))
            continue
        pid, command = holder.pid, holder.command
        url = _url(holder.host, port)
        ours = (
            _is_gateway(client, url)
            if role == "the gateway"
            else sorted(set(served_names(client, f"{url}/v1")) & names)
        )
        if ours:
            what = "the running gateway" if ours is True else f"the running engine serving {', '.join(ours)}"
            findings.append(passed(check, f"in use by {what}"))
            continue
        owner = f"pid {pid} ({command})" if pid else command
        fix = (f"stop it (`kill {pid}`)" if pid else "stop that process") + (
            ", or start the gateway on another port (--port, HXP_GATEWAY_URL)"
            if role == "the gateway"
            else f", or give {role.removeprefix('engine of ')} another port in models.yaml "
            "(then `make compose-generate`)"
        )
        findings.append(failed(check, f"taken by {owner}, which is not part of the stack", fix))
    return findings


# --- memory -------------------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> dict[int, tuple[float, float]]:
    """``index, memory.total, memory.free`` lines (MiB, csv, noheader, nounits) -> {index: (total GiB, free GiB)}."""
    gpus = {}
    for line in text.strip().splitlines():
        index, total, free = (part.strip() for part in line.split(","))
        gpus[int(index)] = (float(total) / 1024, float(free) / 1024)
    return gpus


def memory(stack: Stack, client: httpx.Client) -> list[Finding]:
    from hxp.model.command import engine_groups

    engines, _ = stack.engines(client)
    serving = {name for name, urls in engines.items() if any(name in served_names(client, u) for u in urls)}
    waiting = [g for g in engine_groups(stack.catalogue.models) if not any(m.name in serving for m in g)]
    if stack.catalogue.profile_settings.device == "cuda":
        return [_gpu_memory(stack, waiting)]
    import psutil

    need = sum(max(m.targets.memory_gb for m in g) for g in waiting)
    available = psutil.virtual_memory().available / 2**30
    check = "memory for the engines"
    if not waiting:
        return [passed(check, f"every engine runs; {available:.1f} GiB available")]
    detail = (
        f"{len(waiting)} engine(s) not running need about {need:.1f} GiB (models.yaml memory_gb), "
        f"{available:.1f} GiB available"
    )
    if need > available:
        return [
            failed(
                check,
                detail,
                "stop other processes, run the shared layout (`make run` without --separate), or serve fewer models",
            )
        ]
    return [passed(check, detail)]


def _gpu_memory(stack: Stack, waiting: list[list]) -> Finding:
    check = "GPU memory for the engines"
    if shutil.which("nvidia-smi") is None:
        return failed(
            check,
            "nvidia-smi not found: the profile needs NVIDIA GPUs",
            "install the NVIDIA driver (and the Container Toolkit for compose), or HXP_PROFILE=cpu",
        )
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,memory.total,memory.free", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        return failed(check, f"nvidia-smi failed: {probes.describe(done.stderr)}", "check the NVIDIA driver")
    gpus = parse_nvidia_smi(done.stdout)
    short = []
    for device in sorted({d for g in waiting for d in g[0].deployment.devices}):
        if device not in gpus:
            short.append(f"GPU {device} is not present")
            continue
        total, free = gpus[device]
        need = sum(
            total * (g[0].deployment.vllm.gpu_memory_utilization or 0)
            for g in waiting
            if device in g[0].deployment.devices
        )
        if need > free:
            short.append(f"GPU {device}: {need:.0f} GiB needed, {free:.0f} GiB free")
    if short:
        return failed(
            check,
            "; ".join(short),
            "stop what holds the GPUs (`nvidia-smi` lists the processes) or "
            "lower gpu_memory_utilization in models.yaml",
        )
    return passed(check, f"{len(gpus)} GPU(s); enough free memory for {len(waiting)} engine(s) not running")


# --- weights ------------------------------------------------------------------------------------


def weights(stack: Stack) -> list[Finding]:
    import json

    from hxp.model import weights as prepared
    from hxp.model.quantize import is_made
    from hxp.model.weights import quantized_dir

    if stack.compose:
        return [skipped("weights", "the compose stack keeps them in its model-cache volume or image")]
    findings = []
    for name, package in prepared.packages_in_use(stack.catalogue).items():
        check = f"weights {name}"
        folder = prepared.package_dir(name)
        manifest = prepared.models_dir() / f"{name}{prepared.MANIFEST_SUFFIX}"
        if not folder.is_dir() or not manifest.is_file():
            findings.append(failed(check, f"not prepared ({folder})", "`make prepare` (or `hxp prepare`)"))
            continue
        recorded = json.loads(manifest.read_text())
        actual = prepared.checksums(folder)
        files = recorded.get("files", {})
        changed = sorted(f for f in files if actual.get(f) != files[f])
        extra = sorted(set(actual) - set(files))
        if recorded.get("distribution") != package.distribution:
            findings.append(
                failed(
                    check,
                    f"built from {recorded.get('distribution')}, the catalogue names {package.distribution}",
                    "`make prepare` rebuilds it",
                )
            )
        elif changed or extra:
            what = ", ".join(
                [
                    *(f"{f} differs" if f in actual else f"{f} missing" for f in changed),
                    *(f"{f} unexpected" for f in extra),
                ]
            )
            findings.append(
                failed(
                    check,
                    f"{folder} does not match its manifest: {what}",
                    "`make prepare` rebuilds it (the folder is replaced)",
                )
            )
        else:
            findings.append(passed(check, f"{len(files)} files match their checksums"))
    for model in {quantized_dir(m): m for m in stack.catalogue.models if m.quantization}.values():
        folder = quantized_dir(model)
        findings.append(
            passed(f"weights {folder.name}", "made")
            if is_made(model)
            else failed(f"weights {folder.name}", f"not made ({folder})", "`make quantize` (or `hxp quantize`)")
        )
    for model in stack.catalogue.models:
        if model.package is None and not Path(model.source).expanduser().is_dir():
            if not os.environ.get("HF_TOKEN"):
                findings.append(
                    warned(
                        f"weights {model.name}",
                        f"downloaded from the hub ({model.source}) and HF_TOKEN is not set",
                        "export HF_TOKEN (gated models such as Mixtral need it)",
                    )
                )
    return findings


def kernels(cat: Catalogue) -> list[Finding]:
    """Per CPU engine whose weights need particular vLLM kernels: whether this CPU's vLLM build has them."""
    from hxp.model import kernels as cpu
    from hxp.model.command import engine_command, engine_groups

    if cat.profile_settings.device != "cpu":
        return []
    findings = []
    for group in engine_groups(cat.models):
        command = engine_command(group, cat.profile_settings)
        needed = cpu.weights_kernels(command.model, group[0])
        if not needed:
            continue
        check = f"kernels of {command.log_name}"
        problem = cpu.refusal(command, group[0])
        findings.append(
            failed(
                check,
                problem,
                "give the model weights (`quantization`) this CPU runs in models.yaml, "
                "or serve it on a CPU that has the kernel",
            )
            if problem
            else passed(check, f"{', '.join(sorted(needed))} with {command.dtype} in this CPU's vLLM")
        )
    return findings


# --- env files and the master key --------------------------------------------------------------


def env_files(stack: Stack, env_dir: Path) -> list[Finding]:
    findings = []
    for example in sorted(env_dir.glob(f"*.env{envfiles.SUFFIX}")):
        real = example.with_suffix("")
        check = f"env file {real.name}"
        if not real.exists():
            findings.append(
                failed(check, "missing", "`make env` creates it with fresh secrets")
                if stack.compose
                else skipped(check, "missing; the native stack does not read it")
            )
            continue
        present = envfiles.assignments(real.read_text())
        bad = []
        for key, template in envfiles.assignments(example.read_text()).items():
            if not envfiles.SECRET.search(template) or key not in present:
                continue
            found = envfiles.secret_values(template, present[key]) or {key: present[key]}
            for value in found.values():
                if envfiles.SECRET.search(value):
                    bad.append(f"{key} still holds the example's placeholder")
                elif value.lower() in WEAK_SECRETS or len(value) < MIN_SECRET_CHARS:
                    bad.append(f"{key} holds a weak or example secret")
        mode = stat.S_IMODE(real.stat().st_mode)
        if bad:
            findings.append(
                failed(
                    check,
                    "; ".join(sorted(set(bad))),
                    f"put a random secret there (`openssl rand -hex 24`), the same in every env file "
                    f"that uses it, or delete {real.name} and run `make env`",
                )
            )
        elif mode & 0o077:
            findings.append(warned(check, f"readable by others (mode {mode:o})", f"chmod 600 {real}"))
        else:
            findings.append(passed(check, "secrets set, private to its owner"))
    return findings


def master_key(stack: Stack) -> Finding:
    check = "master key"
    if not stack.master_key:
        if stack.compose:
            return failed(check, "HXP_MASTER_KEY is not set in env/gateway.env", "`make env`")
        return warned(check, "not set yet", "`hxp run` writes .state/master.key; `make gateway` needs HXP_MASTER_KEY")
    if len(stack.master_key) < MIN_MASTER_KEY_CHARS:
        return failed(
            check,
            f"only {len(stack.master_key)} characters",
            "use at least 32 random characters: sk-$(openssl rand -hex 24)",
        )
    return passed(check, f"set ({len(stack.master_key)} characters)")


def engine_venv(stack: Stack) -> list[Finding]:
    from hxp.model.weights import engine_python

    if stack.compose:
        return []
    python = Path(engine_python())
    if os.access(python, os.X_OK):
        return [passed("engine virtualenv", str(python))]
    return [failed("engine virtualenv", f"{python} is missing", "`make install` (or set HXP_ENGINE_PYTHON)")]


# --- stores ---------------------------------------------------------------------------------------


def _store_finding(check: str, where: str, probe: probes.Probe, auth_fix: str, network_fix: str) -> Finding:
    if probe.ok:
        return passed(check, f"{where} answers in {probe.latency_ms} ms")
    if probe.cause == probes.AUTHENTICATION:
        return failed(check, f"{where} refused the credentials: {probe.detail}", auth_fix)
    if probe.cause == probes.NETWORK:
        return failed(check, f"{where} cannot be reached: {probe.detail}", network_fix)
    return failed(check, f"{where}: {probe.detail}", network_fix)


def stores(stack: Stack, client: httpx.Client) -> list[Finding]:
    findings = []
    url = stack.database_url
    if url is None:
        findings.append(failed("database", stack.database_problem or "no URL", "`make env`"))
    elif url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        parent = Path(url[len("sqlite:///") :]).parent
        findings.append(
            passed("database", f"SQLite file not created yet; the gateway creates it in {parent}")
            if os.access(parent if parent.exists() else state_dir(), os.W_OK)
            else failed("database", f"{parent} is not writable", f"give the service user {parent}")
        )
    else:
        findings.append(
            _store_finding(
                "database",
                probes.redact(url),
                probes.database(url),
                "the password in DATABASE_URL (env/gateway.env) must be POSTGRES_PASSWORD's (env/postgres.env)",
                "start PostgreSQL (compose: `docker compose up -d postgres`), or fix host/port in DATABASE_URL",
            )
        )
    if stack.redis_url:
        findings.append(
            _store_finding(
                "redis",
                probes.redact(stack.redis_url),
                probes.redis_ping(stack.redis_url),
                "the password in REDIS_URL must be Redis' requirepass (env/redis.env REDIS_PASSWORD)",
                "start Redis, or fix host/port in REDIS_URL",
            )
        )
    else:
        findings.append(
            skipped(
                "redis",
                "not published by compose: `hxp status` shows the gateway's view"
                if stack.compose
                else "REDIS_URL not set: limits and cache are in-process",
            )
        )
    if "url" in stack.qdrant:
        findings.append(
            _store_finding(
                "qdrant",
                probes.redact(stack.qdrant["url"]),
                probes.qdrant(stack.qdrant, client),
                "QDRANT_API_KEY must be the server's api key",
                "start Qdrant (compose: `docker compose up -d qdrant`), or fix QDRANT_URL",
            )
        )
    elif "path" not in stack.qdrant:
        findings.append(
            skipped(
                "qdrant",
                "the compose stack has no Qdrant server: the gateway keeps its vectors in "
                "local mode (`hxp status` asks it)",
            )
        )
    else:
        path = Path(stack.qdrant["path"])
        target = path if path.exists() else path.parent
        findings.append(
            passed("qdrant", f"local folder {path}")
            if os.access(target, os.W_OK)
            else failed("qdrant", f"{target} is not writable", f"give the service user {target}")
        )
    return findings


def clock(stack: Stack) -> Finding:
    url = stack.database_url
    if url is None:
        return skipped("clock skew with the database", "no database to ask (see above)")
    if not url.startswith(("postgresql://", "postgres://")):
        return skipped("clock skew with the database", "SQLite lives on this host")
    try:
        skew = probes.database_clock_skew_s(url)
    except Exception:  # noqa: BLE001 - the database's own finding says why
        return skipped("clock skew with the database", "the database does not answer (see above)")
    detail = f"the database's clock is {skew:+.2f} s from this host's"
    fix = "sync both clocks (chrony or systemd-timesyncd): usage times, windows and key expiry depend on them"
    if abs(skew) > SKEW_FAIL_S:
        return failed("clock skew with the database", detail, fix)
    if abs(skew) > SKEW_WARN_S:
        return warned("clock skew with the database", detail, fix)
    return passed("clock skew with the database", detail)


def disk(stack: Stack) -> list[Finding]:
    where = state_dir()
    free = shutil.disk_usage(where).free / 2**30
    detail = f"{free:.1f} GiB free on {where} (weights, databases, usage spill, logs)"
    fix = "free space there, or move the state directory (HXP_STATE_DIR)"
    findings = [
        failed("disk space", detail, fix)
        if free < DISK_FAIL_GB
        else warned("disk space", detail, fix)
        if free < DISK_WARN_GB
        else passed("disk space", detail)
    ]
    spill = Path(os.environ.get("HXP_USAGE_SPILL_DIR") or where / "usage-spill")
    rows = sum(sum(1 for _ in f.open("rb")) for f in spill.glob("*.jsonl")) if spill.is_dir() else 0
    findings.append(
        warned(
            "usage spill",
            f"{rows} usage rows wait in {spill}: the gateway could not write them",
            "make the database reachable: the gateway replays them when it answers again",
        )
        if rows
        else passed("usage spill", "empty")
    )
    return findings


def run(stack: Stack, env_dir: Path | None = None) -> list[Finding]:
    """Every check, in the order of the troubleshooting guide."""
    with httpx.Client() as client:
        return [
            *engine_venv(stack),
            master_key(stack),
            *ports(stack, client),
            *memory(stack, client),
            *weights(stack),
            *([] if stack.compose else kernels(stack.catalogue)),
            *env_files(stack, env_dir or stack.project / "env"),
            *stores(stack, client),
            clock(stack),
            *disk(stack),
        ]
