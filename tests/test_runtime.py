"""Process-level speed settings: training compiles without YNNPACK on CPU, and the `archscale`
command restarting itself with a huge-page-backed allocator."""

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import jax
import jax.numpy as jnp
import pytest

from archscale.arch.runtime import compiler_options
from archscale.cli.entry import ALLOCATOR_TUNABLE, merged_tunables


def test_training_compiles_leave_dots_to_eigen_on_cpu():
    if jax.default_backend() != "cpu":
        assert compiler_options() == {}
        return
    x = jnp.ones((256, 256))
    lowered = jax.jit(lambda a: a @ a).lower(x)
    if "__ynn_fusion" not in lowered.compile().as_text():
        pytest.skip("this XLA does not fuse dots through YNNPACK by default: nothing to turn off")
    compiled = lowered.compile(compiler_options=compiler_options())
    assert "__ynn_fusion" not in compiled.as_text()
    assert jnp.allclose(compiled(x), x @ x)


def test_untimed_compiles_change_codegen_not_the_math(tiny_spec):
    """Training compiles at a lower LLVM level than measured serving code: one train step from
    the same state gives the same loss and parameters at either level, up to float32 rounding."""
    from archscale.sweeps.optimizer import make_optimizer
    from archscale.sweeps.recipe import Recipe
    from archscale.sweeps.sharding import batch_sharded, make_mesh, replicated
    from archscale.sweeps.train_step import _build, init_state, schedule_args

    assert compiler_options(served=True) != compiler_options() or jax.default_backend() != "cpu"
    recipe = Recipe(lr=1e-2, batch_size=4).resolved(tiny_spec)
    mesh = make_mesh(None)
    graphdef, state, rest = init_state(tiny_spec, recipe, 0, jnp.float32, mesh)
    chunk, _ = _build(graphdef, make_optimizer(recipe, tiny_spec), 1, replicated(mesh))
    batches = jax.device_put(
        jax.random.randint(jax.random.key(1), (1, 4, tiny_spec.seq_len + 1), 0, 256),
        batch_sharded(mesh, batch_axis=1))
    sched = schedule_args(recipe, tiny_spec, 10)
    lowered = jax.jit(chunk).lower(state, rest, batches, sched, 1)
    outputs = [lowered.compile(compiler_options=compiler_options(served=served))(
        state, rest, batches, sched, 1) for served in (False, True)]
    (untimed, loss), (served, served_loss) = outputs
    assert float(loss[0]) == pytest.approx(float(served_loss[0]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(untimed["params"]), jax.tree.leaves(served["params"]),
                    strict=True):
        # Adam divides by sqrt(v): where a gradient is ~0, a rounding difference in it moves
        # that weight by up to ~6e-6 (measured); a wrong build would move weights by ~lr.
        assert float(jnp.max(jnp.abs(a - b))) < 2e-5


def _tunables_seen(env: dict[str, str], *args: str) -> list[str]:
    """Run a script that calls tune_allocator; what it sees after the restart, and its argv."""
    script = ("import os, sys; from archscale.cli.entry import tune_allocator; tune_allocator(); "
              "print(os.environ.get('GLIBC_TUNABLES')); print(sys.argv[1:])")
    base = {k: v for k, v in os.environ.items()
            if k not in ("GLIBC_TUNABLES", "ARCHSCALE_KEEP_ALLOCATOR")}
    result = subprocess.run([sys.executable, "-c", script, *args], env={**base, **env},
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_merged_tunables_keep_every_user_setting():
    assert merged_tunables("") == ALLOCATOR_TUNABLE
    assert merged_tunables("glibc.malloc.arena_max=2") == \
        f"glibc.malloc.arena_max=2:{ALLOCATOR_TUNABLE}"
    # The user's own value of our key wins, wherever it sits.
    for user in ("glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0",
                 "glibc.malloc.hugetlb=2:glibc.malloc.arena_max=2", ALLOCATOR_TUNABLE):
        assert merged_tunables(user) == user
    # A key that merely contains ours is another key.
    assert merged_tunables("glibc.malloc.hugetlb_x=0") == \
        f"glibc.malloc.hugetlb_x=0:{ALLOCATOR_TUNABLE}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux-only")
def test_tune_allocator_restarts_once_with_the_tunable_added():
    assert _tunables_seen({}, "a", "--b") == [ALLOCATOR_TUNABLE, "['a', '--b']"]
    # A user's own tunables are kept; an already-tuned process does not restart again.
    assert _tunables_seen({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})[0] == \
        f"glibc.malloc.arena_max=2:{ALLOCATOR_TUNABLE}"
    assert _tunables_seen({"GLIBC_TUNABLES": ALLOCATOR_TUNABLE})[0] == ALLOCATOR_TUNABLE
    # A user who turned huge pages off keeps them off.
    assert _tunables_seen({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "x") == \
        ["glibc.malloc.hugetlb=0", "['x']"]
    assert _tunables_seen({"ARCHSCALE_KEEP_ALLOCATOR": "1"})[0] == "None"


def test_the_archscale_command_goes_through_the_entry_point():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "archscale"]
    assert script.value == "archscale.cli.entry:main"
    command = shutil.which("archscale") or pytest.skip("the archscale script is not on PATH")
    result = subprocess.run([command, "arch", "show", "tiny", "--json"], capture_output=True,
                            text=True, check=True)
    assert json.loads(result.stdout)["spec"]["d_model"] > 0
