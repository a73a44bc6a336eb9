"""systemd units from the catalogue, checked by the real `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from hxp.cli import main
from hxp.core import catalogue
from hxp.core.paths import PROJECT_ROOT

ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
HXP = PROJECT_ROOT / ".venv" / "bin" / "hxp"  # ExecStart must exist for verify: use the venv's real script


def generate(out: Path, profile: str, *extra: str) -> list[Path]:
    assert (
        main(
            [
                "systemd",
                "generate",
                "--out",
                str(out),
                "--profile",
                profile,
                "--prefix",
                str(PROJECT_ROOT),
                "--hxp",
                str(HXP),
                "--user",
                "root",
                *extra,
            ]
        )
        == 0
    )
    return sorted(out.iterdir())


def verify(units: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", *map(str, units)], capture_output=True, text=True, timeout=120)


def parse(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read(path)
    return parser


@pytest.mark.parametrize("profile", ["gpu", "cpu", "server", "server-256"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, profile: str) -> None:
    units = generate(tmp_path, profile)
    cat = catalogue.load(profile=profile)
    assert {u.name for u in units} == {f"hxp-model-{m.name}.service" for m in cat.models} | {
        "hxp-gateway.service",
        "hxp.target",
    }
    done = verify(units)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", f"systemd-analyze warned:\n{done.stderr}"


def test_verify_catches_a_missing_command(tmp_path: Path) -> None:
    assert (
        main(
            [
                "systemd",
                "generate",
                "--out",
                str(tmp_path),
                "--profile",
                "cpu",
                "--user",
                "root",
                "--hxp",
                str(tmp_path / "no-such-hxp"),
            ]
        )
        == 0
    )
    done = verify(sorted(tmp_path.iterdir()))
    assert done.returncode != 0 and "no-such-hxp" in done.stderr


def test_model_units_follow_the_template_and_the_catalogue(tmp_path: Path) -> None:
    generate(tmp_path, "gpu")
    for model in catalogue.load(profile="gpu").models:
        service = parse(tmp_path / f"hxp-model-{model.name}.service")["Service"]
        assert service["ExecStart"] == f"{HXP} model serve {model.name}"
        assert service["Restart"] == "always"
        for key, value in {
            "LimitNOFILE": "65536",
            "LimitMEMLOCK": "infinity",
            "NoNewPrivileges": "true",
            "ProtectSystem": "strict",
            "PrivateTmp": "true",
            "ProtectHome": "true",
        }.items():
            assert service[key] == value
        env = (tmp_path / f"hxp-model-{model.name}.service").read_text()
        assert f"Environment=CUDA_VISIBLE_DEVICES={','.join(map(str, model.deployment.devices))}\n" in env
        assert "Environment=HXP_PROFILE=gpu\n" in env


def test_cpu_units_cap_memory_and_the_gateway_unit(tmp_path: Path) -> None:
    generate(tmp_path, "cpu")
    for model in catalogue.load(profile="cpu").models:
        service = parse(tmp_path / f"hxp-model-{model.name}.service")["Service"]
        assert service["MemoryMax"] == f"{model.targets.memory_gb:g}G"
        assert "CUDA_VISIBLE_DEVICES" not in (tmp_path / f"hxp-model-{model.name}.service").read_text()
    gateway = parse(tmp_path / "hxp-gateway.service")
    assert gateway["Service"]["ExecStart"] == f"{HXP} gateway serve"
    assert "hxp-model-phi-3-mini.service" in gateway["Unit"]["After"]
    target = parse(tmp_path / "hxp.target")
    assert "hxp-gateway.service" in target["Unit"]["Wants"].split()


@pytest.mark.parametrize("profile", ["server", "server-256"])
def test_server_units_pin_each_engine_to_its_cores_and_numa_node(tmp_path: Path, profile: str) -> None:
    generate(tmp_path, profile)
    cat = catalogue.load(profile=profile)
    machine = cat.profile_settings.machine
    assert machine is not None
    for model in cat.models:
        service = parse(tmp_path / f"hxp-model-{model.name}.service")["Service"]
        cpus = catalogue.cpu_list(model.deployment.cpus or "")
        assert service["CPUAffinity"] == model.deployment.cpus
        assert service["NUMAPolicy"] == "bind" and service["NUMAMask"] == str(machine.numa_node(cpus[0]))
        assert service["MemoryMax"] == f"{model.targets.memory_gb:g}G"
    gateway = parse(tmp_path / "hxp-gateway.service")["Service"]
    assert gateway["CPUAffinity"] == cat.profile_settings.gateway_cpus
    generate(tmp_path / "cpu", "cpu")
    assert "CPUAffinity" not in (tmp_path / "cpu" / "hxp-model-phi-3-mini.service").read_text()
