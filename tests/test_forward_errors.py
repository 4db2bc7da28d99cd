"""Bad input fails loudly at trace time; run-time failures raise with throw=True (also under jit)
and are reported in ``sol.result`` with throw=False, with unreached outputs NaN.

Run-time errors are equinox's: ``eqx.EquinoxRuntimeError`` eagerly or under ``eqx.filter_jit``;
under ``jax.jit`` JAX re-raises it as its own error type carrying the same message.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax
from ode_jax import RESULTS

Y0 = jnp.array([1.0, 2.0])
JITS = {"eager": lambda fn: fn, "jax.jit": jax.jit, "eqx.filter_jit": eqx.filter_jit}


def raises_at_run_time(match, jit="eager"):
    errors = (RuntimeError, ValueError) if jit == "jax.jit" else eqx.EquinoxRuntimeError
    return pytest.raises(errors, match=match)


TS = jnp.array([0.0, 0.5, 1.0])


def decay(t, y, args):
    return -y


# --- trace-time checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts, match",
    [
        ([0.0, 1.0, 0.5, 2.0], r"ts\[2\]=0.5 follows ts\[1\]=1.0, but ts starts increasing"),
        ([0.0, 1.0, 1.0], r"ts\[2\]=1.0 follows ts\[1\]=1.0"),
        ([2.0, 1.0, 1.5], r"ts\[2\]=1.5 follows ts\[1\]=1.0, but ts starts decreasing"),
        ([1.0, 1.0], r"ts\[1\]=1.0 follows ts\[0\]=1.0"),
        ([0.0, np.nan, 1.0], r"ts must be finite, got ts\[1\]=nan"),
        ([0.0, np.inf], r"ts must be finite"),
        ([[0.0, 1.0]], "1-d array"),
        ([], "1-d array with at least one time"),
    ],
)
def test_bad_ts(ts, match):
    with pytest.raises(ValueError, match=match):
        ode_jax.odeint(decay, Y0, jnp.asarray(ts))


def test_numpy_ts_under_jit_are_checked_at_trace_time():
    # Inside jit, jnp.asarray(numpy) is a tracer; odeint reads numpy (and list) times from the
    # argument itself, so their errors come when tracing, not when running.
    bad = np.array([0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"ts\[2\]=0.5 follows ts\[1\]=1.0"):
        jax.jit(lambda y0: ode_jax.odeint(decay, y0, bad).ys).lower(Y0)


@pytest.mark.parametrize("adjoint", ["continuous", "discrete"])
def test_numpy_and_traced_ts_give_the_same_backwards_solve(adjoint):
    # numpy times fix the direction at trace time; traced ones carry it as an array.
    def f(t, y, a):
        return -a * y * (1.0 + 0.5 * jnp.sin(t))

    ts = np.linspace(2.0, 0.5, 4)

    def loss(a, times):
        sol = ode_jax.odeint(f, jnp.ones(3), times, a, rtol=1e-10, atol=1e-12, adjoint=adjoint)
        return jnp.sum(sol.ys**2)

    static = jax.jit(jax.value_and_grad(lambda a: loss(a, ts)))(0.7)
    traced = jax.jit(jax.value_and_grad(loss))(0.7, jnp.asarray(ts))
    exact = np.exp(-0.7 * ((ts - 2.0) - 0.5 * (np.cos(ts) - np.cos(2.0))))
    np.testing.assert_allclose(static[0], 3 * np.sum(exact**2), rtol=1e-8)
    np.testing.assert_allclose(static, traced, rtol=1e-8)


def test_complex_ts():
    with pytest.raises(TypeError, match="ts must be real"):
        ode_jax.odeint(decay, Y0, jnp.array([0.0, 1.0j]))


def test_integer_ts_are_times():
    sol = ode_jax.odeint(decay, Y0, [0, 1, 2])
    np.testing.assert_allclose(sol.ys[:, 0], np.exp(-np.arange(3.0)), rtol=1e-5)


@pytest.mark.parametrize(
    "f, error, match",
    [
        (lambda t, y, a: y[:1], ValueError, r"returned shape \(1,\) for y, whose shape is \(2,\)"),
        (lambda t, y, a: (y, y), ValueError, "must return a pytree with the structure of y"),
        (lambda t, y, a: y.astype(complex), TypeError, "returned complex values"),
        (lambda t, y, a: y @ jnp.ones((3, 3)), TypeError, "calling the vector field"),
        (
            lambda t, y, a: y if y[0] > 0 else -y,
            jax.errors.TracerBoolConversionError,
            "calling the vector field",
        ),
    ],
)
def test_bad_vector_field(f, error, match):
    with pytest.raises(error, match=match):
        ode_jax.odeint(f, Y0, TS)


def test_bad_vector_field_pytree():
    y0 = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"returned shape \(2,\) for y\['b'\]"):
        ode_jax.odeint(lambda t, y, a: {"a": y["a"], "b": y["a"]}, y0, TS)
    with pytest.raises(ValueError, match="structure of y"):
        ode_jax.odeint(lambda t, y, a: [y["a"], y["b"]], y0, TS)


def test_f_not_callable():
    with pytest.raises(TypeError, match="f must be callable"):
        ode_jax.odeint(Y0, Y0, TS)


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [0.0, -1e-6, np.nan, np.inf])
def test_bad_tolerance(name, value):
    with pytest.raises(ValueError, match=f"{name} must be finite and positive"):
        ode_jax.odeint(decay, Y0, TS, **{name: value})


def test_tolerance_must_be_scalar():
    with pytest.raises(ValueError, match="rtol must be a scalar"):
        ode_jax.odeint(decay, Y0, TS, rtol=jnp.array([1e-6, 1e-6]))


@pytest.mark.parametrize("value", [0.0, -0.1, np.nan])
def test_bad_dt0(value):
    with pytest.raises(ValueError, match="dt0 must be finite and positive"):
        ode_jax.odeint(decay, Y0, TS, solver="rk4", dt0=value)


def test_unknown_solver_lists_valid_names():
    with pytest.raises(ValueError, match="solver='rk45' is not a known solver") as info:
        ode_jax.odeint(decay, Y0, TS, solver="rk45")
    for name in ode_jax.SOLVERS:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_fixed_step_needs_dt0(method):
    with pytest.raises(ValueError, match=f"solver='{method}' takes fixed steps: pass dt0"):
        ode_jax.odeint(decay, Y0, TS, solver=method)


@pytest.mark.parametrize(
    "y0, match",
    [
        (jnp.array([1, 2]), r"y0\(root\) has dtype int"),
        ({"a": jnp.ones(2), "b": jnp.array([1, 2])}, r"y0\['b'\] has dtype int"),
        (jnp.array([True]), "has dtype bool"),
    ],
)
def test_integer_y0(y0, match):
    with pytest.raises(TypeError, match=match):
        ode_jax.odeint(lambda t, y, a: y, y0, TS)


def test_empty_y0():
    with pytest.raises(ValueError, match="y0 must contain at least one array"):
        ode_jax.odeint(lambda t, y, a: y, {}, TS)


@pytest.mark.parametrize("value", [0, -5, 10.0])
def test_bad_max_steps(value):
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        ode_jax.odeint(decay, Y0, TS, max_steps=value)


# --- checks of traced values, at run time -----------------------------------------------------


@pytest.mark.parametrize("jit", ["jax.jit", "eqx.filter_jit"])
def test_traced_bad_tolerance_raises_at_run_time(jit):
    solve = JITS[jit](lambda rtol: ode_jax.odeint(decay, Y0, TS, rtol=rtol).ys)
    solve(jnp.asarray(1e-6))  # arrays: eqx.filter_jit would make Python floats static
    with raises_at_run_time("rtol must be finite and positive", jit):
        jax.block_until_ready(solve(jnp.asarray(-1e-6)))


def test_traced_non_monotonic_ts_raises_at_run_time():
    solve = eqx.filter_jit(lambda ts: ode_jax.odeint(decay, Y0, ts).ys)
    solve(TS)
    with raises_at_run_time("strictly increasing or decreasing"):
        jax.block_until_ready(solve(jnp.array([0.0, 1.0, 0.5])))


# --- run-time failures --------------------------------------------------------------------------


def nan_after_half(t, y, args):
    return -y + jnp.where(t > 0.5, jnp.nan, 0.0)


FAILURES = {
    # name: (f, y0, ts, kwargs, result code, number of outputs reached)
    "max_steps": (
        decay,
        Y0,
        jnp.array([0.0, 0.01, 100.0]),
        dict(max_steps=5),
        "max_steps_reached",
        2,
    ),
    "nonfinite": (nan_after_half, Y0, jnp.array([0.0, 0.25, 1.0]), {}, "nonfinite", 2),
    "nonfinite_at_start": (lambda t, y, a: y * jnp.nan, Y0, TS, {}, "nonfinite", 1),
    "nonfinite_fixed_step": (
        nan_after_half,
        Y0,
        jnp.array([0.0, 0.25, 1.0]),
        dict(solver="rk4", dt0=0.1),
        "nonfinite",
        2,
    ),
    "blowup": (
        lambda t, y, a: y**2,
        jnp.array([1.0]),
        jnp.array([0.0, 0.5, 2.0]),
        {},
        "step_size_underflow",
        2,
    ),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_runtime_failure_reported_with_throw_false(name):
    f, y0, ts, kwargs, code, reached = FAILURES[name]
    sol = ode_jax.odeint(f, y0, ts, throw=False, **kwargs)
    assert int(sol.result) == getattr(RESULTS, code)
    assert not bool(sol.succeeded)
    assert np.all(np.isfinite(sol.ys[:reached]))
    assert np.all(np.isnan(sol.ys[reached:]))
    if name == "blowup":  # y = 1 / (1 - t): the output before the singularity is right
        np.testing.assert_allclose(sol.ys[1], [2.0], rtol=1e-5)
    if name.startswith("nonfinite"):  # shrinking a step cannot cure a NaN from the start
        assert int(sol.stats["num_steps"]) < 100


@pytest.mark.parametrize("jit", list(JITS))
@pytest.mark.parametrize("name", list(FAILURES))
def test_runtime_failure_raises_with_throw_true(name, jit):
    f, y0, ts, kwargs, code, _ = FAILURES[name]
    solve = JITS[jit](lambda y0, ts: ode_jax.odeint(f, y0, ts, **kwargs).ys)
    message = RESULTS.message(getattr(RESULTS, code))
    with raises_at_run_time(message.split("(")[0][:40], jit):
        jax.block_until_ready(solve(y0, ts))


def test_failure_codes_per_batch_entry_under_vmap():
    solve = jax.vmap(
        lambda y0: ode_jax.odeint(lambda t, y, a: y**2, y0, jnp.array([0.0, 2.0]), throw=False)
    )
    sol = solve(jnp.array([[1.0], [-1.0]]))  # y0 = 1 blows up at t = 1; y0 = -1 decays
    np.testing.assert_array_equal(sol.result, [RESULTS.step_size_underflow, RESULTS.successful])
    assert np.isnan(sol.ys[0, 1, 0])
    np.testing.assert_allclose(sol.ys[1, 1, 0], -1 / 3, rtol=1e-5)
    with raises_at_run_time("step size fell below"):
        jax.block_until_ready(
            jax.vmap(lambda y0: ode_jax.odeint(lambda t, y, a: y**2, y0, jnp.array([0.0, 2.0])).ys)(
                jnp.array([[1.0], [-1.0]])
            )
        )


@pytest.mark.parametrize("norm", [None, lambda e: jnp.sqrt(jnp.mean(e**2))])
def test_overflowing_step_with_zero_error_estimate_is_not_accepted(norm):
    # Every stage is the same huge constant, so the embedded error estimate is (about) zero
    # while y1 overflows: the scaled error is then 0 / inf = 0. The step must be rejected
    # (ours: the error carries y1 - y1, NaN here; a user norm: a separate finiteness check).
    def f(t, y, a):
        return jnp.full_like(y, 1e300)  # y = 1e300 t overflows (float64) at t = 1.8e8

    ts = jnp.array([0.0, 1e9])
    sol = ode_jax.odeint(f, jnp.zeros(2), ts, dt0=1.0, norm=norm, throw=False)
    assert not bool(sol.succeeded)
    assert int(sol.result) in (RESULTS.nonfinite, RESULTS.step_size_underflow)
    assert not np.any(np.isinf(sol.ys))
