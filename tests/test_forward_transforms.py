"""The forward solve under jit and vmap (over y0, args and ts), with traced tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax

RTOL, ATOL = 1e-8, 1e-10


def decay(t, y, rate):
    return -rate * y * (1 + 0.5 * jnp.sin(t))


def decay_exact(ts, y0, rate):
    ts = np.asarray(ts)
    return (
        np.asarray(y0)[None]
        * np.exp(-rate * (ts - ts[0] - 0.5 * (np.cos(ts) - np.cos(ts[0]))))[..., None]
    )


@pytest.mark.parametrize("method", ["tsit5", "rk4"])
def test_jit_matches_eager(method):
    y0, ts = jnp.array([1.0, -2.0]), jnp.linspace(0.0, 2.0, 5)
    kw = dict(solver=method, rtol=RTOL, atol=ATOL, dt0=0.01)
    eager = ode_jax.odeint(decay, y0, ts, 0.7, **kw)
    jitted = jax.jit(lambda y0, ts, rate: ode_jax.odeint(decay, y0, ts, rate, **kw))(y0, ts, 0.7)
    np.testing.assert_allclose(jitted.ys, eager.ys, rtol=1e-13, atol=0)
    assert {k: int(v) for k, v in jitted.stats.items()} == {
        k: int(v) for k, v in eager.stats.items()
    }


def test_vmap_over_y0_args_and_ts():
    """Each batch entry takes its own steps: the same answer as solving it alone."""
    solve = jax.jit(
        jax.vmap(
            lambda y0, ts, rate: ode_jax.odeint(decay, y0, ts, rate, rtol=RTOL, atol=ATOL),
            in_axes=(0, 0, 0),
        )
    )
    y0s = jnp.array([[1.0, -2.0], [0.5, 3.0], [2.0, 0.1]])
    rates = jnp.array([0.7, 2.0, 0.1])
    # Different spans, and one batch entry solved backwards in time.
    tss = jnp.stack(
        [jnp.linspace(0.0, 2.0, 4), jnp.linspace(0.0, 5.0, 4), jnp.linspace(3.0, 1.0, 4)]
    )
    sol = solve(y0s, tss, rates)
    assert sol.ys.shape == (3, 4, 2)
    assert sol.stats["nfe"].shape == (3,)
    for i in range(3):
        alone = ode_jax.odeint(decay, y0s[i], tss[i], rates[i], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(sol.ys[i], alone.ys, rtol=1e-12, atol=1e-14)
        assert int(sol.stats["nfe"][i]) == int(alone.stats["nfe"])
        want = decay_exact(tss[i], y0s[i], float(rates[i]))
        np.testing.assert_allclose(sol.ys[i], want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("axis", ["y0", "args", "ts"])
def test_vmap_one_argument(axis):
    y0, ts, rate = jnp.array([1.0, -2.0]), jnp.linspace(0.0, 2.0, 3), jnp.asarray(0.7)
    batch = {
        "y0": (jnp.stack([y0, 2 * y0]), ts, rate, (0, None, None)),
        "args": (y0, ts, jnp.array([0.7, 1.3]), (None, None, 0)),
        "ts": (y0, jnp.stack([ts, ts[::-1]]), rate, (None, 0, None)),
    }[axis]
    *inputs, in_axes = batch
    sol = jax.vmap(
        lambda y0, ts, rate: ode_jax.odeint(decay, y0, ts, rate, rtol=RTOL, atol=ATOL),
        in_axes=in_axes,
    )(*inputs)
    for i in range(2):
        args = [x if a is None else x[i] for x, a in zip(inputs, in_axes)]
        want = decay_exact(args[1], args[0], float(args[2]))
        np.testing.assert_allclose(sol.ys[i], want, rtol=0, atol=1e-7)


def test_traced_tolerances_do_not_recompile():
    traces = [0]

    def f(t, y, args):
        traces[0] += 1  # runs only while tracing
        return decay(t, y, 0.7)

    @jax.jit
    def solve(rtol, atol):
        return ode_jax.odeint(
            f, jnp.array([1.0, -2.0]), jnp.linspace(0.0, 5.0, 3), rtol=rtol, atol=atol
        )

    nfes, errors = [], []
    want = decay_exact(jnp.linspace(0.0, 5.0, 3), jnp.array([1.0, -2.0]), 0.7)
    for rtol in (1e-3, 1e-6, 1e-9):
        sol = solve(rtol, rtol * 1e-2)
        nfes.append(int(sol.stats["nfe"]))
        errors.append(float(np.max(np.abs(sol.ys - want))))
        if rtol == 1e-3:
            traced_once = traces[0]
    assert traces[0] == traced_once
    assert solve._cache_size() == 1
    assert nfes[0] < nfes[1] < nfes[2]  # the tolerance really is used
    assert errors[0] > errors[1] > errors[2]


def test_vmap_over_tolerances():
    sol = jax.vmap(
        lambda rtol: ode_jax.odeint(
            decay, jnp.array([1.0]), jnp.linspace(0.0, 5.0, 3), 0.7, rtol=rtol, atol=1e-12
        )
    )(jnp.array([1e-3, 1e-6, 1e-9]))
    nfe = np.asarray(sol.stats["nfe"])
    assert nfe[0] < nfe[1] < nfe[2]


def test_output_count_changes_no_step():
    """Outputs come from the dense output: 1, a few or hundreds of output times per step give
    the same steps, and each output matches the exact solution; under vmap each member writes
    its own outputs from its own steps."""
    y0 = jnp.array([1.0, -2.0])
    kw = dict(rtol=1e-6, atol=1e-9)
    ref = ode_jax.odeint(decay, y0, jnp.array([0.0, 4.0]), 0.7, **kw)
    n_steps = int(ref.stats["num_steps"])
    assert n_steps > 5
    for n in (3, 60, 400):
        ts = jnp.linspace(0.0, 4.0, n)
        sol = jax.jit(lambda y0, ts: ode_jax.odeint(decay, y0, ts, 0.7, **kw))(y0, ts)
        assert {k: int(v) for k, v in sol.stats.items()} == {
            k: int(v) for k, v in ref.stats.items()
        }
        np.testing.assert_allclose(sol.ys[-1], ref.ys[-1], rtol=1e-12)
        np.testing.assert_allclose(sol.ys, decay_exact(ts, y0, 0.7), rtol=0, atol=2e-6)
    ts = jnp.linspace(0.0, 4.0, 400)
    rates = jnp.array([3.0, 0.05])
    batch = jax.vmap(lambda rate: ode_jax.odeint(decay, y0, ts, rate, **kw))(rates)
    for i, rate in enumerate(rates):
        alone = ode_jax.odeint(decay, y0, ts, rate, **kw)
        np.testing.assert_allclose(batch.ys[i], alone.ys, rtol=1e-12, atol=1e-15)
        assert int(batch.stats["nfe"][i]) == int(alone.stats["nfe"])
