import gc

import jax
import pytest

# Numerical tests run in float64; float32 tests ask for it explicitly. As in jax's and diffrax's
# own suites, implicit dtype promotion and rank broadcasting are errors, so the library is
# checked to be clean under the strictest settings users run.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's caches of traced and compiled programs after each test module: the suite
    compiles a few thousand programs in one process, and keeping them all grows memory until
    XLA's compiler itself can fail."""
    yield
    jax.clear_caches()
    gc.collect()
