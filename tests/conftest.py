import jax

# Numerical tests run in float64; float32 tests ask for it explicitly. As in jax's and diffrax's
# own suites, implicit dtype promotion and rank broadcasting are errors, so the library is
# checked to be clean under the strictest settings users run.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
