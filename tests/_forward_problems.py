"""ODEs with closed-form solutions, shared by the forward-solver tests.

Each problem is ``(f, y0, t0, t1, exact)`` where ``exact(t, t_init, y_init)`` is the solution at the
times ``t`` (shape (T,)) of the problem started from ``y(t_init) = y_init``; it is stacked along a
leading axis like ``odeint``'s ``ys``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

import ode_jax

A_LINEAR = np.array([[-0.1, 2.0, 0.0], [-2.0, -0.1, 0.3], [0.0, -0.3, -1.0]])


def _decay_exact(t, t_init, y_init):
    return y_init[None] * np.exp(-0.7 * (t - t_init))[:, None]


def _logistic_exact(t, t_init, y_init):
    e = np.exp(t - t_init)
    return y_init * e / (1.0 - y_init + y_init * e)


def _ycos_exact(t, t_init, y_init):
    return y_init * np.exp(np.sin(t) - np.sin(t_init))


def _linear_exact(t, t_init, y_init):
    return np.stack([scipy.linalg.expm(A_LINEAR * (s - t_init)) @ y_init for s in t])


PROBLEMS = {
    "decay": (lambda t, y, args: -0.7 * y, np.array([1.0, -2.0]), 0.0, 3.0, _decay_exact),
    "logistic": (lambda t, y, args: y * (1 - y), np.array(0.1), 0.0, 8.0, _logistic_exact),
    "ycos": (lambda t, y, args: y * jnp.cos(t), np.array(1.5), 0.0, 6.0, _ycos_exact),
    "linear": (
        lambda t, y, args: jnp.asarray(A_LINEAR, y.dtype) @ y,
        np.array([1.0, 0.0, 0.5]),
        0.0,
        5.0,
        _linear_exact,
    ),
}

ADAPTIVE = ["bosh3", "dopri5", "tsit5", "dopri8"]
FIXED = ["euler", "midpoint", "heun", "rk4"]
ORDERS = dict(euler=1, midpoint=2, heun=2, rk4=4, bosh3=3, dopri5=5, tsit5=5, dopri8=8)


def problem_ts(name, n, backwards=False):
    """(f, y_start, ts, exact_ys): ``n`` output times over the problem's interval, either
    direction; the start value is the exact solution at ``ts[0]``."""
    f, y0, t0, t1, exact = PROBLEMS[name]
    ts = np.linspace(t0, t1, n)
    if backwards:
        ts = ts[::-1]
        y_start = exact(np.array([t1]), t0, y0)[0]
    else:
        y_start = y0
    return f, y_start, ts, exact(ts, ts[0], y_start)


def tol_scale(ys, rtol, atol):
    """The size of one step's allowed error for solutions ``ys``."""
    return atol + rtol * float(np.max(np.abs(ys)))


@functools.cache
def jit_solve(problem, method, rtol=1e-8, atol=1e-10):
    """A jitted ``(y0, ts) -> Solution`` for a problem; cached, so the tests that share one
    compile it once (compilation, not solving, is most of the tests' run time)."""
    f = PROBLEMS[problem][0]
    return jax.jit(lambda y0, ts: ode_jax.odeint(f, y0, ts, solver=method, rtol=rtol, atol=atol))
