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
