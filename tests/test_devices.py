"""Local workers own their devices: simulated GPU, TPU and CPU hosts, and the processes
`study run --workers K` starts (their environments recorded instead of run)."""

import os
import subprocess
import types

import pytest
from conftest import SMALL_STUDY_SWEEP

from archscale.arch.errors import ArchscaleError
from archscale.search import devices as devices_lib
from archscale.search import worker as worker_lib
from archscale.search.devices import (
    MEM_FRACTION,
    LocalDevices,
    assign_devices,
    local_devices,
    worker_environ,
)


def gpus(n: int) -> LocalDevices:
    return LocalDevices("gpu", tuple(map(str, range(n))))


def visible(plan) -> list[list[str]]:
    return [w.env["CUDA_VISIBLE_DEVICES"].split(",") for w in plan.workers]


def memory_caps_per_gpu(plan) -> dict[str, float]:
    caps: dict[str, float] = {}
    for w in plan.workers:
        for gpu in w.env["CUDA_VISIBLE_DEVICES"].split(","):
            caps[gpu] = caps.get(gpu, 0.0) + float(w.env[MEM_FRACTION])
    return caps


@pytest.mark.parametrize(("n_gpus", "workers", "expected"), [
    (8, 4, [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]),
    (3, 2, [["0", "1"], ["2"]]),
    (2, 2, [["0"], ["1"]]),
])
def test_workers_get_disjoint_gpus_without_preallocation(n_gpus, workers, expected):
    plan = assign_devices(gpus(n_gpus), workers)
    assert visible(plan) == expected
    assert sorted(g for share in expected for g in share) == sorted(gpus(n_gpus).ids)
    assert all(w.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for w in plan.workers)
    assert all(cap <= devices_lib.MEMORY_HEADROOM for cap in memory_caps_per_gpu(plan).values())
    assert plan.note is None and all(not w.cores for w in plan.workers)


@pytest.mark.parametrize(("n_gpus", "workers"), [(1, 2), (2, 3), (2, 8)])
def test_more_workers_than_gpus_share_them_under_a_memory_cap_and_say_so(n_gpus, workers):
    plan = assign_devices(gpus(n_gpus), workers)
    assert len(plan.workers) == workers
    assert all(len(share) == 1 for share in visible(plan))
    assert all(w.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for w in plan.workers)
    caps = memory_caps_per_gpu(plan)
    assert set(caps) == set(gpus(n_gpus).ids)  # every GPU used
    assert all(cap <= devices_lib.MEMORY_HEADROOM + 1e-9 for cap in caps.values())
    assert plan.note and "share" in plan.note and "preallocation off" in plan.note


def test_gpu_ids_follow_the_users_cuda_visible_devices(monkeypatch):
    """With CUDA_VISIBLE_DEVICES=3,5 JAX numbers the two GPUs 0 and 1; workers must get 3 and 5."""
    calls = []

    def fake_run(command, env, **kwargs):
        calls.append(env)
        return types.SimpleNamespace(returncode=0, stderr="",
                                     stdout='{"platform": "gpu", "count": 2}\n')

    monkeypatch.setattr(devices_lib.subprocess, "run", fake_run)
    monkeypatch.setattr(devices_lib, "_accelerator_plugin_installed", lambda: True)
    found = local_devices({"CUDA_VISIBLE_DEVICES": "3, 5", "PATH": os.environ["PATH"]})
    assert found == LocalDevices("gpu", ("3", "5"))
    assert calls[0]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # the probe grabs no memory
    assert visible(assign_devices(found, 2)) == [["3"], ["5"]]


def test_without_an_accelerator_plugin_no_probe_runs(monkeypatch):
    monkeypatch.setattr(devices_lib, "_accelerator_plugin_installed", lambda: False)
    monkeypatch.setattr(devices_lib.subprocess, "run", None)  # calling it would fail
    assert local_devices({}).platform == "cpu"


def test_tpu_chips_are_split_in_boxes_one_process_each():
    plan = assign_devices(LocalDevices("tpu", tuple(map(str, range(8)))), 4)
    assert [w.env["TPU_VISIBLE_CHIPS"] for w in plan.workers] == ["0,1", "2,3", "4,5", "6,7"]
    assert {w.env["TPU_CHIPS_PER_PROCESS_BOUNDS"] for w in plan.workers} == {"1,2,1"}
    assert {w.env["TPU_PROCESS_BOUNDS"] for w in plan.workers} == {"1,1,1"}
    assert len({w.env["TPU_PROCESS_PORT"] for w in plan.workers}) == 4
    single = assign_devices(LocalDevices("tpu", ("0", "1", "2", "3")), 4)
    assert [w.env["TPU_VISIBLE_CHIPS"] for w in single.workers] == ["0", "1", "2", "3"]
    assert {w.env["TPU_CHIPS_PER_PROCESS_BOUNDS"] for w in single.workers} == {"1,1,1"}


@pytest.mark.parametrize(("chips", "workers", "hint"), [(8, 3, "8 or 4 or 2"), (4, 8, "4 or 2 or 1")])
def test_tpu_chips_are_never_shared(chips, workers, hint):
    with pytest.raises(ArchscaleError, match=f"use workers {hint}"):
        assign_devices(LocalDevices("tpu", tuple(map(str, range(chips)))), workers)


def test_cpu_workers_are_pinned_to_their_own_cores():
    plan = assign_devices(LocalDevices("cpu", ("0", "1", "2", "3", "4")), 2)
    assert [w.cores for w in plan.workers] == [(0, 1, 2), (3, 4)]
    assert all(not w.env for w in plan.workers) and plan.note is None
    with pytest.raises(ArchscaleError, match="use 1 to 5 workers"):
        assign_devices(LocalDevices("cpu", ("0", "1", "2", "3", "4")), 6)


@pytest.fixture
def no_affinity(monkeypatch):
    """An OS without sched_getaffinity / sched_setaffinity (macOS), with 4 cores."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.delattr(os, "sched_setaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)


def test_an_os_without_affinity_calls_runs_unpinned_workers(no_affinity):
    found = local_devices({"JAX_PLATFORMS": "cpu"})
    assert found == LocalDevices("cpu", ("0", "1", "2", "3"), can_pin=False)
    plan = assign_devices(found, 2)
    assert all(not w.cores for w in plan.workers)
    assert "cannot pin" in plan.note
    devices_lib.pin_to_cores([0])  # a no-op there, not a crash
    assert devices_lib.split_cores(2) == [[0, 1], [2, 3]]


def test_a_worker_environment_keeps_one_memory_fraction_variable():
    base = {"XLA_CLIENT_MEM_FRACTION": "0.5", "ARCHSCALE_STORAGE": "postgresql://u@h/db"}
    env = worker_environ(base, assign_devices(gpus(1), 2).workers[0])
    assert "XLA_CLIENT_MEM_FRACTION" not in env  # jaxlib refuses both names at once
    assert env[MEM_FRACTION] == "0.45" and env["ARCHSCALE_STORAGE"] == base["ARCHSCALE_STORAGE"]


class Recorder:
    """Stands in for subprocess.Popen: records each worker's argv and environment."""

    def __init__(self):
        self.started = []

    def __call__(self, command, env):
        self.started.append((command, env))
        return types.SimpleNamespace(pid=1000 + len(self.started), wait=lambda timeout=None: 0)


@pytest.fixture
def study(tmp_path):
    from archscale.search.study import create_study

    handle = create_study(SMALL_STUDY_SWEEP, str(tmp_path / "study.journal"))
    return handle.name, handle.url


@pytest.mark.parametrize("host", [gpus(2), LocalDevices("cpu", ("0", "1", "2", "3"),
                                                         can_pin=False)], ids=["gpus", "macos"])
def test_study_run_starts_each_worker_on_its_own_devices(host, study, monkeypatch):
    name, url = study
    recorder, echoed = Recorder(), []
    monkeypatch.setattr(worker_lib, "local_devices", lambda: host)
    monkeypatch.setattr(worker_lib, "subprocess", types.SimpleNamespace(
        Popen=recorder, TimeoutExpired=subprocess.TimeoutExpired))
    worker_lib.run_study(name, url, workers=2, echo=echoed.append)
    assert len(recorder.started) == 2
    for command, env in recorder.started:
        assert env["ARCHSCALE_STORAGE"] == url and url not in command  # URL in env, never argv
        assert "--cores" not in command  # GPUs are assigned by env; macOS cannot pin
    if host.platform == "gpu":
        assert [env["CUDA_VISIBLE_DEVICES"] for _, env in recorder.started] == ["0", "1"]
        assert echoed[0] == "workers: 0 on GPU 0; 1 on GPU 1"
    else:
        assert any("cannot pin" in line for line in echoed)
