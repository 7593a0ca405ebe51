"""What a trial compiles: three executables to train a new shape, none to train it again, three
to time it (``sweeps.train_step``, ``sweeps.throughput``)."""

import logging
import re

import jax

from archscale.arch import ArchSpec
from archscale.sweeps import data as data_lib
from archscale.sweeps.recipe import Budget, Recipe
from archscale.sweeps.throughput import measure_throughput
from archscale.sweeps.trainer import train

# A shape no other test module trains, so this process has not compiled it yet.
SPEC = ArchSpec(vocab_size=256, seq_len=16, n_layers=1, d_model=24, n_heads=3, n_kv_heads=1,
                head_dim=8, d_ff=40)
RECIPE = Recipe(lr=1e-2, batch_size=4, eval_interval=0.5, eval_tokens=256)


def compiled(caplog) -> list[str]:
    """Names of the functions compiled while ``caplog`` recorded (jax.log_compiles)."""
    names = [re.search(r"Compiling (\S+)", r.getMessage()) for r in caplog.records]
    return sorted(m.group(1) for m in names if m)


def test_a_new_shape_compiles_three_functions_and_a_repeat_none(caplog):
    data = data_lib.load_data()
    warm = SPEC.replace(d_model=16, n_heads=2)  # process-wide one-offs compile here, not below
    train(warm, Budget(tokens=4 * 16 * 4), RECIPE, data, progress=False)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        first = train(SPEC, Budget(tokens=4 * 16 * 10), RECIPE, data, seed=0, progress=False)
        assert compiled(caplog) == ["jit(chunk)", "jit(evaluate)", "jit(init)"]
        caplog.clear()
        # Another seed, another budget (a partial last chunk too): the same executables.
        again = train(SPEC, Budget(tokens=4 * 16 * 23), RECIPE, data, seed=1, progress=False)
        assert compiled(caplog) == []
        caplog.clear()
        measure_throughput(SPEC, batch=2, context=8, decode_tokens=4, repeats=1, min_seconds=0)
        assert compiled(caplog) == ["jit(decode)", "jit(prefill)", "jit(setup)"]
    assert first.status == again.status == "complete" and again.steps == 23
    assert again.compile_time_s == 0.0 and again.seed == 1


def test_the_initial_weights_are_the_models_own():
    """The compiled init draws the weights ``Transformer(spec, rngs=nnx.Rngs(seed))`` draws."""
    from flax import nnx

    from archscale.arch.model import Transformer
    from archscale.sweeps.sharding import data_mesh
    from archscale.sweeps.train_step import init_state

    _, state, _ = init_state(SPEC, RECIPE, 7, jax.numpy.float32, data_mesh())
    _, params, _ = nnx.split(Transformer(SPEC, rngs=nnx.Rngs(7), compute_dtype=jax.numpy.float32),
                             nnx.Param, ...)
    same = jax.tree.map(lambda a, b: bool((a == b).all()), state["params"], params)
    assert all(jax.tree.leaves(same)) and int(state["step"]) == 0
