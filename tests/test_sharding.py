"""The (data, fsdp) mesh: its validation, the parameter layout, multi-host detection, and sharded
runs on 8 CPU devices that match one device's losses, hold 1/F of the state each and resume
from checkpoints onto another mesh."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P
from typer.testing import CliRunner

from archscale.arch import ArchscaleError
from archscale.cli.main import app
from archscale.search.sweepfile import SweepFileError, parse_sweep
from archscale.sweeps import sharding
from archscale.sweeps.checkpoint import Checkpointer
from archscale.sweeps.results import RunResult
from archscale.sweeps.sharding import MeshShape, distributed_args, fsdp_spec, make_mesh


def test_mesh_shape_parses_data_and_fsdp():
    assert MeshShape.parse("data=2,fsdp=4") == MeshShape(data=2, fsdp=4)
    assert MeshShape.parse(" fsdp=8 ") == MeshShape(fsdp=8)
    assert MeshShape.parse("") == MeshShape()
    for bad in ("data=2;fsdp=4", "tp=2", "fsdp=x", "fsdp=-1"):
        with pytest.raises(ArchscaleError, match="data=D,fsdp=F"):
            MeshShape.parse(bad)
    with pytest.raises(ArchscaleError, match="mesh fsdp=0: each axis must be >= 1"):
        MeshShape.parse("fsdp=0")


def test_the_mesh_must_use_every_device():
    one = jax.devices()[:1]
    assert dict(make_mesh(devices=one).shape) == {"data": 1, "fsdp": 1}
    eight = one * 8  # the checks run before any device is used
    with pytest.raises(ArchscaleError, match=r"data=2,fsdp=2 does not fit the run's 8 devices: "
                                             r"data x fsdp must equal 8 \(e.g. data=4,fsdp=2\)"):
        make_mesh(MeshShape(data=2, fsdp=2), eight)
    with pytest.raises(ArchscaleError, match=r"fsdp=3 .* \(fsdp one of 1, 2, 4, 8\)"):
        make_mesh(MeshShape(fsdp=3), eight)


def test_a_sweep_file_carries_a_mesh():
    base = {"name": "m", "seq_len": 16, "budget": {"tokens_per_param": 20},
            "grid": {"scales": [1e4], "d_model": [32], "r": [1.0]}}
    assert parse_sweep(base).mesh == MeshShape()
    sweep = parse_sweep({**base, "mesh": {"data": 2, "fsdp": 4}})
    assert sweep.mesh == MeshShape(data=2, fsdp=4)
    assert sweep.to_dict()["mesh"] == {"data": 2, "fsdp": 4}
    with pytest.raises(SweepFileError, match=r"mesh.fdsp: unknown key \(valid keys here: data, "
                                             r"fsdp\)"):
        parse_sweep({**base, "mesh": {"fdsp": 4}})
    with pytest.raises(SweepFileError, match="mesh: mesh fsdp=0: each axis must be >= 1"):
        parse_sweep({**base, "mesh": {"fsdp": 0}})


def test_train_takes_a_mesh_flag(tmp_path):
    common = ["train", "--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
              "--head-dim", "8", "--d-ff", "64", "--seq-len", "32", "--batch-size", "8",
              "--eval-tokens", "1024", "--tokens", str(4 * 8 * 32), "--no-progress",
              "--no-throughput"]
    result = CliRunner().invoke(app, [*common, "--mesh", "fsdp=2"])
    assert isinstance(result.exception, ArchscaleError)
    assert "mesh fsdp=2 does not fit the run's 1 devices" in str(result.exception)
    result = CliRunner().invoke(app, [*common, "--mesh", "data=1,fsdp=1", "--out",
                                      str(tmp_path / "run.json")])
    assert result.exit_code == 0, result.output
    run = RunResult.load(tmp_path / "run.json")
    assert run.mesh == {"data": 1, "fsdp": 1} and run.state_bytes_per_device > 0


def test_each_weight_is_split_on_its_largest_divisible_axis():
    assert fsdp_spec((256, 64), 8) == P("fsdp", None)
    assert fsdp_spec((2, 8, 16, 64), 8) == P(None, None, None, "fsdp")
    assert fsdp_spec((2, 64, 128), 8) == P(None, None, "fsdp")
    assert fsdp_spec((2, 12, 20), 8) == P()  # no axis divides: replicated
    assert fsdp_spec((64,), 8) == fsdp_spec((), 8) == P()  # vectors and scalars: replicated
    assert fsdp_spec((256, 64), 1) == P()


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"JAX_NUM_PROCESSES": "1"}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
      "JAX_PROCESS_ID": "2"},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}),
    ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, None),
    ({"SLURM_NTASKS": "16", "SLURM_JOB_ID": "7"}, {}),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, {}),
    ({"TPU_WORKER_HOSTNAMES": "host-0"}, None),
    ({"TPU_WORKER_HOSTNAMES": "host-0,host-1"}, {}),
])
def test_several_hosts_are_detected_from_the_environment(environ, expected):
    assert distributed_args(environ) == expected


def test_distributed_env_errors_say_what_is_missing():
    with pytest.raises(ArchscaleError, match="JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID"):
        distributed_args({"JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ArchscaleError, match="SLURM_NTASKS='many' must be an integer"):
        distributed_args({"SLURM_NTASKS": "many"})


def test_jax_distributed_starts_only_on_several_hosts(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for name in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                 "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    sharding.initialize_distributed()
    assert calls == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    sharding.initialize_distributed()
    assert calls == [{"coordinator_address": "localhost:1234", "num_processes": 2,
                      "process_id": 1}]


def test_checkpoints_are_restored_by_name(tmp_path):
    """Arrays come back under their names, whatever order the target lists them in; a
    checkpoint whose names differ from the run's (an older state layout) is refused."""
    saved = {"b": jnp.arange(3.0), "a": {"w": jnp.ones((2, 2)), "v": jnp.zeros(4)}}
    with Checkpointer(tmp_path, {"run": 1}) as checkpointer:
        checkpointer.save(5, saved, {"curve": []})
        like = {"a": {"v": jnp.ones(4), "w": jnp.zeros((2, 2))}, "b": jnp.zeros(3)}
        state, progress = checkpointer.restore(like)
        assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), state, saved))
        assert progress == {"curve": []}
        with pytest.raises(ArchscaleError, match="do not match this run's by name"):
            checkpointer.restore({"leaves": [jnp.zeros(3)]})


EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    from archscale.arch import ArchscaleError, ArchSpec
    from archscale.sweeps.data import load_data
    from archscale.sweeps.recipe import Budget, Recipe
    from archscale.sweeps.sharding import MeshShape, data_mesh
    from archscale.sweeps.trainer import train

    assert jax.device_count() == 8
    spec = ArchSpec(vocab_size=256, seq_len=32, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                    head_dim=16, d_ff=128)
    # lr 3e-3: at 1e-2 Adam turns the float reordering of sharded sums into 1e-5 by step 20
    # (one device does that too, at another chunk length).
    recipe = Recipe(lr=3e-3, batch_size=8, warmup=0.1, eval_interval=0.5, eval_tokens=1024)
    budget = Budget(tokens=20 * 8 * 32)
    data = load_data()

    def run(mesh, **options):
        return train(spec, budget, recipe, data, progress=False, mesh=mesh, **options)

    def kill_at_10(step, tokens, val_loss):
        if step == 10:
            raise KeyboardInterrupt

    out = {"one": run(data_mesh(jax.devices()[:1])), "fsdp8": run(MeshShape(fsdp=8)),
           "data2_fsdp4": run(MeshShape(data=2, fsdp=4))}
    try:
        run(MeshShape(fsdp=8), checkpoint_dir=sys.argv[1], report=kill_at_10)
    except KeyboardInterrupt:
        pass
    out["resumed"] = run(MeshShape(data=2, fsdp=4), checkpoint_dir=sys.argv[1])
    try:
        train(spec, budget, Recipe(batch_size=4), data, mesh=MeshShape(fsdp=8))
    except ArchscaleError as err:
        out["batch_error"] = str(err)
    print(json.dumps({k: v if isinstance(v, str) else v.to_dict() for k, v in out.items()}))
""")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """Run results of the tiny shape on 8 forced CPU devices (one subprocess: the device count
    is fixed when JAX starts)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES,
                          str(tmp_path_factory.mktemp("checkpoints"))],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mesh"), [("fsdp8", {"data": 1, "fsdp": 8}),
                                            ("data2_fsdp4", {"data": 2, "fsdp": 4})])
def test_sharded_runs_give_the_loss_of_one_device(eight_devices, name, mesh):
    one, run = eight_devices["one"], eight_devices[name]
    assert one["mesh"] == {"data": 1, "fsdp": 1} and run["mesh"] == mesh
    assert run["status"] == "complete" and run["steps"] == 20 and run["n_devices"] == 8
    assert run["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
    for a, b in zip(run["loss_curve"], one["loss_curve"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    # One device holds all the state; each of F holds 1/F (norm scales are replicated).
    total = one["state_bytes_per_device"]
    assert run["state_bytes_per_device"] <= total / mesh["fsdp"] * 1.05


@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_on_another_mesh(eight_devices):
    """Saved under fsdp=8 at step 10, restored by name into data=2 x fsdp=4: same end."""
    resumed, whole = eight_devices["resumed"], eight_devices["data2_fsdp4"]
    assert resumed["status"] == "complete" and resumed["steps"] == 20
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-5)
    assert resumed["state_bytes_per_device"] == whole["state_bytes_per_device"]


@pytest.mark.slow
def test_a_batch_the_mesh_cannot_split_is_a_user_error(eight_devices):
    assert eight_devices["batch_error"] == (
        "batch_size=4 is not divisible by the mesh's 8 devices (data=1 x fsdp=8): use a "
        "multiple of 8 (e.g. 8)")
