import gc

import jax
import pytest

# Numerical tests run in float64; float32 tests ask for it explicitly. As in jax's and diffrax's
# own suites, implicit dtype promotion and rank broadcasting are errors, so the library is
# checked to be clean under the strictest settings users run.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


# The two tiers (markers): the library (ode_jax itself) and the experiments, benchmarks, docs and
# notebooks built on it. `python -m pytest` runs both; `-m library` is the fast inner loop.
EXPERIMENT_TESTS = {
    "test_adjoint_study.py",
    "test_benchmarks.py",
    "test_bouncing_ball.py",
    "test_cnf.py",
    "test_distributed.py",
    "test_docs.py",
    "test_experiments.py",
    "test_harness.py",
    "test_latent_ode.py",
    "test_notebooks.py",
    "test_odenet.py",
    "test_stiff_experiment.py",
    "test_train_step_bench.py",
}


def pytest_collection_modifyitems(config, items):
    """Every test gets its tier (a test marked ``experiments`` in a library file keeps it), and
    tests marked ``slow`` are left out unless the ``-m`` expression names ``slow``."""
    for item in items:
        if item.get_closest_marker("experiments") is None:
            tier = "experiments" if item.path.name in EXPERIMENT_TESTS else "library"
            item.add_marker(getattr(pytest.mark, tier))
    if "slow" in (config.option.markexpr or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's caches of traced and compiled programs after each test module: the suite
    compiles a few thousand programs in one process, and keeping them all grows memory until
    XLA's compiler itself can fail."""
    yield
    jax.clear_caches()
    gc.collect()
