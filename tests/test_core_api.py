"""The open core: adjoint objects, solve settings, the public RungeKutta constructor, and the
fixes found trying the library as a new user (float32 long horizons, non-finite input, dtmax,
grad-of-grad through the discrete adjoint)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax


def _decay(t, y, a):
    return -a * y


# --- adjoint objects --------------------------------------------------------------------------


def test_adjoint_strings_are_shorthands_for_default_objects():
    ts = np.array([0.0, 1.0])

    def grad(adjoint):
        return jax.grad(lambda a: ode_jax.odeint(_decay, 1.0, ts, a, adjoint=adjoint).ys[-1])(0.5)

    for name, obj in (
        ("continuous", ode_jax.ContinuousAdjoint()),
        ("discrete", ode_jax.DiscreteAdjoint()),
    ):
        assert float(grad(name)) == float(grad(obj))
    np.testing.assert_allclose(grad("continuous"), -np.exp(-0.5), rtol=1e-6)


def test_adjoint_options_are_validated_and_moved_keywords_explain_themselves():
    with pytest.raises(ValueError, match="rtol must be finite and positive"):
        ode_jax.ContinuousAdjoint(rtol=-1.0)
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        ode_jax.ContinuousAdjoint(max_steps=0)
    with pytest.raises(ValueError, match="not a known solver"):
        ode_jax.ContinuousAdjoint(solver="rk45")
    with pytest.raises(ValueError, match="checkpoints must be an int >= 2"):
        ode_jax.DiscreteAdjoint(checkpoints=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ode_jax.DiscreteAdjoint(seminorm=True)  # an option of the other adjoint
    with pytest.raises(ValueError, match="is not an adjoint"):
        ode_jax.odeint(_decay, 1.0, [0.0, 1.0], 0.5, adjoint="backsolve")
    with pytest.raises(TypeError, match=r"ContinuousAdjoint\(seminorm=True\)"):
        ode_jax.odeint(_decay, 1.0, [0.0, 1.0], 0.5, seminorm=True)
    with pytest.raises(TypeError, match=r"DiscreteAdjoint\(checkpoints=...\)"):
        ode_jax.odeint(_decay, 1.0, [0.0, 1.0], 0.5, checkpoints=4)
    with pytest.raises(ValueError, match="fixed-step: pass dt0"):
        ode_jax.odeint(
            _decay, 1.0, [0.0, 1.0], 0.5, adjoint=ode_jax.ContinuousAdjoint(solver="rk4")
        )


def test_continuous_adjoint_options_take_effect():
    ts = np.array([0.0, 2.0])

    def bwd_stats(adjoint):
        def loss(a, probe):
            sol = ode_jax.odeint(
                _decay, 1.0, ts, a, rtol=1e-10, atol=1e-12, adjoint=adjoint, probe=probe
            )
            return sol.ys[-1]

        g, g_probe = jax.grad(loss, argnums=(0, 1))(0.5, ode_jax.make_probe())
        return float(g), ode_jax.probe_stats(g_probe)

    g_loose, s_loose = bwd_stats(ode_jax.ContinuousAdjoint(rtol=1e-3, atol=1e-6))
    g_tight, s_tight = bwd_stats(ode_jax.ContinuousAdjoint(rtol=1e-10, atol=1e-12))
    assert int(s_tight["num_steps"]) > int(s_loose["num_steps"])
    np.testing.assert_allclose(g_tight, -2 * np.exp(-1.0), rtol=1e-8)
    _, s_rk4 = bwd_stats(ode_jax.ContinuousAdjoint(solver="dopri8"))
    assert int(s_rk4["num_steps"]) > 0


# --- solve settings ---------------------------------------------------------------------------


def test_solve_settings_replace_and_overrides():
    s = ode_jax.SolveSettings(solver="dopri5", rtol=1e-3, atol=1e-3)
    assert s.replace(rtol=1e-5).rtol == 1e-5 and s.rtol == 1e-3
    assert hash(s) == hash(ode_jax.SolveSettings(solver="dopri5", rtol=1e-3, atol=1e-3))
    ts = np.array([0.0, 1.0])
    loose = s.odeint(_decay, 1.0, ts, 0.5)
    tight = s.odeint(_decay, 1.0, ts, 0.5, rtol=1e-9, atol=1e-12)
    assert int(tight.stats["nfe"]) > int(loose.stats["nfe"])
    np.testing.assert_allclose(tight.ys[-1], np.exp(-0.5), rtol=1e-8)
    with pytest.raises(TypeError, match="no field"):
        s.replace(tolerance=1e-3)
    with pytest.raises(ValueError, match="fixed steps"):
        ode_jax.SolveSettings(solver="rk4")
    with pytest.raises(ValueError, match="rtol must be finite and positive"):
        ode_jax.SolveSettings(rtol=0.0)


# --- the public RungeKutta constructor ---------------------------------------------------------

RALSTON3 = dict(
    c=[0.0, 1 / 2, 3 / 4, 1.0],
    a=[[1 / 2], [0.0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
    b=[2 / 9, 1 / 3, 4 / 9, 0.0],
    b_err=[2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8],
)


def test_user_tableau_is_a_working_adaptive_method():
    m = ode_jax.RungeKutta("ralston3", 3, **RALSTON3)
    assert m.adaptive and m.fsal and m.evals_per_step == 3
    ts = np.linspace(0.0, 2.0, 5)
    sol = ode_jax.odeint(_decay, 1.0, ts, 0.7, solver=m, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sol.ys, np.exp(-0.7 * ts), rtol=1e-6)
    # The full (stages, stages) matrix form is accepted too.
    full = np.zeros((4, 4))
    for i, row in enumerate(RALSTON3["a"], start=1):
        full[i, :i] = row
    m2 = ode_jax.RungeKutta("ralston3", 3, **{**RALSTON3, "a": full})
    assert m2.a == m.a


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(a=[[1 / 2], [0.0, 3 / 4]]), "a has 2 rows for 4 stages"),
        (dict(a=[[1 / 2], [0.0, 3 / 4, 0.1], [2 / 9, 1 / 3, 4 / 9]]), "row 2 of a has 3 entries"),
        (dict(a=[[1 / 2], [0.1, 3 / 4], [2 / 9, 1 / 3, 4 / 9]]), "row 2 of a sums to"),
        (dict(b=[2 / 9, 1 / 3, 4 / 9]), "b has 3 weights for 4 stages"),
        (dict(b=[0.3, 1 / 3, 4 / 9 - 0.3 + 2 / 9, 0.0]), "order-2 quadrature"),
        (dict(b_err=[0.1, 0.0, 0.0, 0.0]), "b_err must sum to 0"),
        (dict(c=[0.1, 1 / 2, 3 / 4, 1.0]), r"c\[0\] must be 0"),
        (dict(dense=np.ones((4, 2))), "rows of dense must sum to b"),
        (dict(dense=np.ones((3, 2))), "dense must have shape"),
    ],
)
def test_inconsistent_tableau_is_a_clear_value_error(change, message):
    with pytest.raises(ValueError, match=message):
        ode_jax.RungeKutta("ralston3", 3, **{**RALSTON3, **change})


def test_adaptive_non_fsal_tableau_needs_a_dense_output():
    # Heun-Euler 2(1): adaptive, not FSAL (b[-1] != 0).
    kw = dict(c=[0.0, 1.0], a=[[1.0]], b=[0.5, 0.5], b_err=[-0.5, 0.5])
    with pytest.raises(ValueError, match="needs its own dense output"):
        ode_jax.RungeKutta("heun_euler", 2, **kw)
    # With one (linear in theta: the trapezoid's weights), it solves.
    m = ode_jax.RungeKutta("heun_euler", 2, **kw, dense=[[0.5], [0.5]])
    sol = ode_jax.odeint(_decay, 1.0, np.array([0.0, 1.0]), 0.5, solver=m, rtol=1e-6)
    np.testing.assert_allclose(sol.ys[-1], np.exp(-0.5), rtol=1e-4)


def test_unknown_solver_object_type_is_rejected():
    with pytest.raises(ValueError, match="not a known solver"):
        ode_jax.odeint(_decay, 1.0, [0.0, 1.0], 0.5, solver=object())


# --- bugs found trying the library ------------------------------------------------------------


@pytest.mark.parametrize("t_end", [1e3, 1e4])
def test_float32_long_horizon_fast_transient(t_end):
    # The step floor follows the current time: near t = 0 small steps are legal even when
    # t_end is large (it was 16 eps * t_end, ~2e-3 at t_end = 1e3 in float32).
    def f(t, y, a):
        return -y + jnp.exp(-t / 0.01) * jnp.cos(t / 0.0005)

    ts = jnp.asarray([0.0, 1.0, t_end], jnp.float32)
    sol = ode_jax.odeint(f, jnp.asarray(1.0, jnp.float32), ts, rtol=1e-4, atol=1e-6)
    assert sol.ys.dtype == jnp.float32
    # y(t) = e^-t (1 + a transient contribution of ~2.5e-5): at t = 1 close to e^-1, then ~0.
    # (rtol 1e-4 in float32 over this transient: diffrax Tsit5 is off by 1.2e-3 too.)
    np.testing.assert_allclose(sol.ys[1], np.exp(-1.0), rtol=5e-3)
    assert abs(float(sol.ys[2])) < 1e-5
    # Past the transient the steps sit at tsit5's stability limit for y' = -y (about 3.5):
    # diffrax Tsit5 takes the same 308 / 2866 accepted steps at t_end = 1e3 / 1e4.
    assert int(sol.stats["num_accepted"]) < 0.3 * t_end + 50


def test_float32_long_horizon_oscillator_keeps_accuracy():
    ts = jnp.linspace(0.0, 1e4, 11, dtype=jnp.float32)
    w = 1e-2  # period ~628: many periods over the horizon
    sol = ode_jax.odeint(
        lambda t, y, a: jnp.stack([y[1], -(w**2) * y[0]]),
        jnp.asarray([1.0, 0.0], jnp.float32),
        ts,
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(sol.ys[:, 0], np.cos(w * np.asarray(ts, np.float64)), atol=2e-3)


def test_nonfinite_y0_and_args_are_named():
    ts = np.array([0.0, 1.0])
    with pytest.raises(Exception, match="y0 contains NaN or inf"):
        jax.block_until_ready(ode_jax.odeint(_decay, jnp.array([1.0, jnp.nan]), ts, 0.5).ys)
    with pytest.raises(Exception, match="args contains NaN or inf"):
        jax.block_until_ready(ode_jax.odeint(_decay, jnp.ones(2), ts, jnp.inf * 0.0).ys)
    sol = ode_jax.odeint(_decay, jnp.array([1.0, jnp.inf]), ts, 0.5, throw=False)
    assert int(sol.result) == ode_jax.RESULTS.nonfinite_y0
    # Under jit and vmap too.
    bad = jax.jit(jax.vmap(lambda y: ode_jax.odeint(_decay, y, ts, 0.5, throw=False).result))(
        jnp.array([[1.0], [jnp.nan]])
    )
    assert bad.tolist() == [0, ode_jax.RESULTS.nonfinite_y0]


@pytest.mark.parametrize("concatenate", [False, True])
def test_all_finite_checks_every_float_leaf_with_float_reductions(concatenate):
    from ode_jax._solver import all_finite

    def check(tree):
        return bool(all_finite(tree, concatenate=concatenate))

    ok = {"a": jnp.ones((3, 2)), "b": jnp.zeros(4, jnp.float64), "n": jnp.array([1, 2])}
    assert check(ok) and check({}) and check({"n": jnp.array([7])})
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        assert not check({**ok, "b": ok["b"].at[2].set(bad)})
        assert not check({**ok, "c": jnp.array([1.0 + 0j, complex(0.0, bad)])})
    # Huge finite values must not overflow into a false alarm.
    assert check(jnp.full(8, jnp.finfo(jnp.float32).max))
    # No boolean reduction (reduce_and/or): XLA:CPU compiles those more slowly.
    jaxpr = jax.make_jaxpr(lambda t: all_finite(t, concatenate=concatenate))(ok).jaxpr
    prims = {e.primitive.name for e in jaxpr.eqns}
    assert not prims & {"reduce_and", "reduce_or"}, prims


def test_dtmax_bounds_every_step():
    ts = np.array([0.0, 10.0])
    free = ode_jax.odeint(_decay, 1.0, ts, 0.1, rtol=1e-3, atol=1e-6)
    capped = ode_jax.odeint(_decay, 1.0, ts, 0.1, rtol=1e-3, atol=1e-6, dtmax=0.25)
    assert int(free.stats["num_accepted"]) < 40 <= int(capped.stats["num_accepted"])
    np.testing.assert_allclose(capped.ys[-1], np.exp(-1.0), rtol=1e-5)
    with pytest.raises(ValueError, match="dtmax must be finite and positive"):
        ode_jax.odeint(_decay, 1.0, ts, 0.1, dtmax=-1.0)


def test_strict_promotion_is_on_in_this_suite():
    # conftest runs everything under the strictest numpy semantics JAX offers.
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    assert jax.config.jax_numpy_rank_promotion == "raise"
    with pytest.raises(jax.dtypes.TypePromotionError):
        jnp.ones(2, jnp.int32) + jnp.ones(2, jnp.int64)


@pytest.mark.parametrize("adjoint", ["continuous", "discrete"])
def test_float32_gradients_under_strict_promotion(adjoint):
    mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    mlp = jax.tree.map(lambda x: x.astype(jnp.float32) if eqx.is_inexact_array(x) else x, mlp)
    y0 = jnp.ones((3, 2), jnp.float32)
    ts = np.linspace(0.0, 1.0, 4).astype(np.float32)

    def loss(m):
        sol = ode_jax.odeint(
            lambda t, y, m: jax.vmap(m)(y), y0, ts, m, rtol=1e-4, atol=1e-6, adjoint=adjoint
        )
        return jnp.sum(sol.ys**2)

    g = eqx.filter_grad(loss)(mlp)
    leaves = jax.tree.leaves(g)
    assert all(x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def test_every_result_code_has_a_message():
    codes = [v for k, v in vars(ode_jax.RESULTS).items() if isinstance(v, int)]
    assert sorted(codes) == list(range(len(ode_jax.RESULTS.messages)))


# --- the discrete adjoint's step VJP ------------------------------------------------------------


@pytest.mark.parametrize("name", ["dopri5", "tsit5", "rk4"])
@pytest.mark.parametrize("with_dense", [False, True])
def test_unrolled_step_vjp_matches_the_looped_one(name, with_dense):
    # RungeKutta.linearize_step takes one jax.vjp of the unrolled step; the looped layout
    # recomputes the stages and walks them back by hand (AbstractSolver's default path).
    # Both must give the same dense info, cotangents of (y, args, t) and evaluation counts.
    solver = ode_jax.SOLVERS[name]
    w = jnp.array([[0.3, -1.1], [0.7, 0.2]])

    def f(t, y, a):
        return jnp.tanh(y @ (a * w)) + jnp.sin(3.0 * t) * y

    t, dt, a = jnp.asarray(0.4), jnp.asarray(0.3), jnp.asarray(1.3)
    y = jnp.array([0.5, -0.8])
    wd = jnp.asarray(with_dense)
    keys = jax.random.split(jax.random.key(0), solver.stages + 2)
    ct_y1 = jax.random.normal(keys[0], (2,))
    ct_y0 = jax.random.normal(keys[1], (2,))
    # Without dense output, the last FSAL stage is not evaluated: its cotangent is zero then.
    used = solver.stages if (with_dense or not solver.fsal) else solver.stages - 1
    ct_ks = [
        jax.random.normal(k, (2,)) if i < used else jnp.zeros(2) for i, k in enumerate(keys[2:])
    ]
    ct_dense = (ct_y0, ct_ks, jnp.zeros(()))
    results = []
    for s in (solver, solver.looped()):
        info, pull, nfe = s.linearize_step(f, t, y, dt, a, None, wd)
        ct_y, _, ct_a, ct_t, nfe_vjp = pull(ct_y1, None, ct_dense)
        ks = info[1][:used]
        results.append((ks, ct_y, ct_a, ct_t, int(nfe), int(nfe_vjp)))
    (ks_u, *rest_u), (ks_l, *rest_l) = results
    np.testing.assert_allclose(np.stack(ks_u), np.stack(ks_l), rtol=1e-12)
    for u, lo in zip(rest_u[:3], rest_l[:3]):
        np.testing.assert_allclose(u, lo, rtol=1e-10, atol=1e-12)
    assert rest_u[3:] == rest_l[3:] == [used, used]

    # And against jax.vjp of the plain step (with every stage evaluated).
    def step(y_, a_, t_):
        y1, _, info, _, _ = solver.step(f, t_, y_, dt, a_, solver.init(f, t_, y_, a_)[0])
        return y1, info[1][:used]

    _, pull_ref = jax.vjp(step, y, a, t)
    ref = pull_ref((ct_y1, ct_ks[:used]))
    np.testing.assert_allclose(rest_u[0], ref[0] + ct_y0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rest_u[1], ref[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rest_u[2], ref[2], rtol=1e-10, atol=1e-12)


def test_unrolled_step_vjp_traces_the_vector_field_once():
    # The kept step's jax.vjp calls f through one nested jit, so f (and its linearisation) is
    # traced once for all six stages of dopri5, not once per stage: on the ODE-Net block this
    # cut the discrete gradient's trace from 0.54 to 0.31 s. The program is the same.
    solver = ode_jax.SOLVERS["dopri5"]
    traces = []

    def f(t, y, a):
        traces.append(t)
        return jnp.tanh(a * y) * jnp.cos(t)

    def run(y):
        info, pull, _ = solver.linearize_step(f, 0.2, y, 0.1, 2.0, None, jnp.asarray(True))
        return pull(y, None, jax.tree.map(jnp.zeros_like, info))[0]

    y = jnp.linspace(-1.0, 1.0, 8)
    jaxpr = jax.make_jaxpr(run)(y)
    assert len(traces) == 1
    assert str(jaxpr).count("= jit[") >= solver.stages  # a call of the traced f per stage

    # Same cotangent as the looped layout, which recomputes the stages by hand.
    def run_looped(y):
        s = solver.looped()
        info, pull, _ = s.linearize_step(f, 0.2, y, 0.1, 2.0, None, jnp.asarray(True))
        return pull(y, None, jax.tree.map(jnp.zeros_like, info))[0]

    np.testing.assert_allclose(jax.jit(run)(y), jax.jit(run_looped)(y), rtol=1e-12)


def test_unrolled_step_vjp_falls_back_when_its_intermediates_do_not_fit():
    # Over the memory budget, RungeKutta.linearize_step recomputes the stages and walks them
    # back in a loop instead of keeping them (one jax.vjp of the unrolled step has no loop).
    solver = ode_jax.SOLVERS["dopri5"]

    def f(t, y, a):
        return jnp.tanh(a * y)

    def grad_program(memory):
        def run(y):
            info, pull, _ = solver.linearize_step(
                f, 0.0, y, 0.1, 2.0, None, jnp.asarray(False), memory
            )
            return pull(y, None, jax.tree.map(jnp.zeros_like, info))[0]

        return str(jax.make_jaxpr(run)(jnp.ones(16)))

    assert "while" not in grad_program(None)
    assert "while" not in grad_program(10**6)
    assert "while" in grad_program(64)
