"""CPU placement of engines and the gateway (pure: cores + engine tasks in, core sets out)."""

from __future__ import annotations

import pytest

from hxp.model.placement import describe, omp_threads_bind, place

SHARED = ["chat", "embedding"]  # the native runner's default layout
SEPARATE = ["chat"] * 4 + ["embedding"]


def test_two_cores_chat_alone_embeddings_with_the_gateway() -> None:
    placement = place({0, 1}, SHARED)
    assert placement.engines == ((1,), (0,))
    assert placement.gateway == (0,) and placement.shared_gateway


def test_gateway_gets_its_own_core_once_every_engine_has_one() -> None:
    placement = place(range(3), SHARED)
    assert placement.engines == ((2,), (1,)) and placement.gateway == (0,) and not placement.shared_gateway


@pytest.mark.parametrize("cores", [2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("tasks", [SHARED, SEPARATE, ["embedding"], ["chat", "chat"]], ids=str)
def test_engines_never_share_a_core_when_there_are_enough(cores: int, tasks: list[str]) -> None:
    if cores < len(tasks):
        pytest.skip("fewer cores than engines: see test_fewer_cores_than_engines_share_light_engines_apart")
    placement = place(range(cores), tasks)
    used = [c for engine in placement.engines for c in engine]
    assert len(used) == len(set(used)), placement  # disjoint
    assert all(placement.engines), "every engine has a core"
    own = not set(placement.gateway) & set(used)
    if cores >= len(tasks) + 1:
        assert own and set(used) | set(placement.gateway) == set(range(cores)), "every core is used"
    else:
        assert not own and set(used) == set(range(cores))


def test_chat_engines_get_more_cores_than_embedding_engines() -> None:
    placement = place(range(8), SHARED)
    assert placement.gateway == (0,)
    assert placement.engines == ((3, 4, 5, 6, 7), (1, 2))  # weights 4:1, lightest next to the gateway
    assert place(range(16), SEPARATE).engines[-1] == (1,)
    assert [len(e) for e in place(range(16), SEPARATE).engines[:4]] == [4, 4, 3, 3]


def test_fewer_cores_than_engines_share_light_engines_apart() -> None:
    placement = place([0, 1], SEPARATE)
    assert placement.engines == ((1,), (1,), (1,), (1,), (0,))  # the chat engines take turns on core 1
    assert placement.gateway == (0,)
    assert place(range(3), SEPARATE).engines == ((1,), (2,), (1,), (2,), (0,))
    assert place([0, 1], ["chat"] * 3).engines == ((0,), (1,), (0,))


def test_one_core_is_shared_by_everything() -> None:
    placement = place([5], SEPARATE)
    assert set(placement.engines) == {(5,)} and placement.gateway == (5,)


def test_any_core_ids_and_gateway_size() -> None:
    placement = place([7, 3, 9, 11], SHARED, gateway_cores=2)
    assert placement.gateway == (3, 7) and placement.engines == ((11,), (9,))
    assert place([7, 3], SHARED, gateway_cores=0).engines == ((7,), (3,))
    assert place([0, 1], []).gateway == (0, 1)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no cores"):
        place([], SHARED)
    with pytest.raises(ValueError, match="unknown task.*'rerank'"):
        place([0, 1], ["rerank"])
    with pytest.raises(ValueError, match="gateway_cores"):
        place([0, 1], SHARED, gateway_cores=-1)


def test_omp_threads_leave_the_last_core_to_the_engines_front_end() -> None:
    assert omp_threads_bind([1]) == "1"
    assert omp_threads_bind([4, 2, 3]) == "2,3"
    with pytest.raises(ValueError):
        omp_threads_bind([])


def test_describe_names_each_engine_and_the_gateway() -> None:
    lines = describe(place([0, 1], SHARED), ["engine chat", "engine embed"])
    assert lines == ["engine chat: cores 1", "engine embed: cores 0", "gateway: cores 0 (shared)"]
