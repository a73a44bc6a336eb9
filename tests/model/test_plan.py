"""`hxp plan`: the memory and core plan and the roofline's arithmetic (no engine started; see
test_plan_engines.py for the roofline against real engines)."""

from __future__ import annotations

import os

import pytest

from hxp.cli import main
from hxp.core import catalogue, traffic
from hxp.model import plan

SERVER = catalogue.load(profile="server")
MACHINE = catalogue.Machine()  # the server profile's: the requirements' hardware (test_catalogue_server.py)


def requests(cat: catalogue.Catalogue) -> dict[str, plan.Request]:
    data = traffic.load()
    return {m.name: plan.Request(*traffic.mean_request(data, m)) for m in cat.models}


def test_decoding_a_dense_model_reads_its_weights_and_kv_cache_at_its_share_of_the_bandwidth() -> None:
    openchat = SERVER.get("openchat-3.5")  # 4.15 GB of 4-bit weights on 2 of the 16 cores: 1/8 of 160 GB/s
    request = plan.Request(prompt_tokens=237, output_tokens=10)
    est = plan.estimate([openchat], MACHINE, (11, 12), request, runtime_gb=3)
    assert est.decode_tok_s == pytest.approx(20e9 / (4.15e9 + 237 * 131072))
    faster = plan.estimate([openchat], MACHINE.model_copy(update={"memory_bandwidth_gbs": 320}), (11, 12), request, 3)
    assert faster.decode_tok_s == pytest.approx(2 * est.decode_tok_s)


def test_a_mixture_of_experts_reads_the_experts_its_tokens_chose() -> None:
    roof = plan.Roofline(SERVER.get("mixtral-8x7b"), MACHINE, 4)
    assert roof.weights_read(1) == pytest.approx(24.65e9 * 12.9 / 46.7)  # the active 12.9B of 46.7B
    assert roof.weights_read(2) > roof.weights_read(1)
    assert roof.weights_read(64) == pytest.approx(24.65e9, rel=1e-6)  # 64 tokens choose every expert


def test_a_long_prompt_is_bound_by_compute() -> None:
    roof = plan.Roofline(SERVER.get("phi-3-mini"), MACHINE, 3)  # 3 cores x 2.4 GHz x 64 flop (AVX-512, float32)
    assert roof.step_s(4096) == pytest.approx(4096 * 2 * 3.82e9 / (3 * 2.4e9 * 64))


def test_compute_follows_the_vector_units() -> None:
    assert plan.flops_per_cycle(["avx2"], "float32") == 32
    assert plan.flops_per_cycle(["avx2", "avx512f"], "bfloat16") == 64
    assert plan.flops_per_cycle(["avx2", "avx512f", "avx512_bf16"], "bfloat16") == 128


@pytest.mark.parametrize("profile", ["server", "server-256"])
def test_the_planned_profiles_targets_are_the_plans(profile: str) -> None:
    """The load test holds the server profiles to what the plan proposes for their machine, not to GPU figures."""
    cat = catalogue.load(profile=profile)
    assert cat.profile_settings.machine is not None
    for est in plan.plan(cat, cat.profile_settings.machine, requests(cat)):
        proposed = plan.propose(est)
        targets = cat.get(est.names[0]).targets
        assert (targets.avg_latency_ms, targets.p95_latency_ms, targets.throughput_rps, targets.memory_gb) == (
            proposed.avg_latency_ms,
            proposed.p95_latency_ms,
            proposed.throughput_rps,
            proposed.memory_gb,
        ), est.names
        assert targets.memory_gb >= est.memory_gb
        assert targets.p95_latency_ms <= cat.get(est.names[0]).api.timeout_s * 1000


def test_the_requirements_targets_are_out_of_reach_of_the_cpu_server() -> None:
    gpu = catalogue.load(profile="gpu")
    estimates = {e.names[0]: e for e in plan.plan(SERVER, MACHINE, requests(SERVER))}
    mixtral = plan.shortfalls(estimates["mixtral-8x7b"], gpu.get("mixtral-8x7b").targets)
    assert len(mixtral) == 2 and "avg latency 2000 ms" in mixtral[0] and "throughput 10 req/s" in mixtral[1]
    reachable = gpu.get("mixtral-8x7b").targets.model_copy(update={"avg_latency_ms": 1e9, "throughput_rps": 1e-3})
    assert plan.shortfalls(estimates["mixtral-8x7b"], reachable) == []


def test_hxp_plan_prints_the_plan_against_the_requirements(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--profile", "server"]) == 0
    out = capsys.readouterr().out
    assert "profile server on 16 cores / 32 threads, 1 NUMA node(s), 128 GB, 160 GB/s" in out
    assert "weights and runtimes 76.2 GB of 80 GB (allocation.models_gb)" in out
    for name in SERVER.names:
        assert f"| {name} |" in out and f"- {name} (avg" in out
    assert "phi-3-mini (avg 500 ms, 40 req/s): avg latency 500 ms: one request alone takes" in out


def test_hxp_plan_refuses_a_machine_the_plan_does_not_fit(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--profile", "server-256", "--memory-gb", "128"]) == 1
    assert "256 GB is more than the machine's 128 GB" in capsys.readouterr().err
    assert main(["plan", "--profile", "server", "--cores", "12"]) == 1
    assert "beyond the machine's 12 cores" in capsys.readouterr().err
    assert main(["plan", "--profile", "server", "--instruction-sets", "avx2"]) == 1
    assert "AVX-512" in capsys.readouterr().err
    assert main(["plan", "--profile", "server", "--here", "--cores", "2", "--bandwidth-gbs", "20"]) == 1
    assert "3-6 is beyond the machine's 2 cores" in capsys.readouterr().err  # this machine, described as 2 cores
    assert main(["plan", "--profile", "gpu", "--bandwidth-gbs", "20"]) == 2
    assert "profile 'gpu' is not a CPU profile" in capsys.readouterr().err


def test_hxp_plan_here_describes_this_machine(capsys: pytest.CaptureFixture) -> None:
    assert main(["plan", "--profile", "cpu", "--bandwidth-gbs", "20"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert f"{len(os.sched_getaffinity(0))} threads" in first and "20 GB/s" in first


def test_this_machine_is_measured() -> None:
    machine = plan.measure_machine(bandwidth_gbs=12.5)
    assert machine.threads == len(os.sched_getaffinity(0)) and 1 <= machine.cores <= machine.threads
    assert machine.memory_bandwidth_gbs == 12.5 and machine.memory_gb > 1
    assert set(machine.instruction_sets) <= set(plan.INSTRUCTION_SETS)
    assert 0 < plan.measure_bandwidth([min(os.sched_getaffinity(0))], seconds=0.2) < 10_000


def test_the_average_request_follows_the_load_test_traffic() -> None:
    data = traffic.load()
    quick = traffic.mean_request(data, SERVER.get("phi-3-mini"))  # the `quick` workload: max_tokens 16-96
    assert quick[1] == 56
    cpu = traffic.mean_request(data, catalogue.load(profile="cpu").get("phi-3-mini"))  # cpu: a quarter as long
    assert cpu[1] == (4 + 24) / 2 and cpu[0] == quick[0]
    prompt, output = traffic.mean_request(data, SERVER.get("all-minilm-l6-v2"))
    assert output == 0 and prompt > 0


def test_the_native_runner_places_a_planned_profile_as_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    from hxp.runner import placement

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    placed = placement(SERVER, separate=False)
    assert placed is not None and placed.gateway == (0, 1) and placed.engines[0] == (3, 4, 5, 6)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with pytest.raises(SystemExit, match=r"planned for cores this machine does not give us \(2, 3, 4,"):
        placement(SERVER, separate=False)
