"""Side-by-side benchmarks of ode_jax against diffrax, jax.experimental.ode and torchdiffeq."""
