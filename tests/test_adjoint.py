"""Gradients of odeint: continuous and discrete adjoints against finite differences, diffrax,
each other and closed forms; backward statistics; memory; jit/vmap; float32."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax

ADJOINTS = ["continuous", "discrete"]
# Where both variants take long, the continuous one runs with -m slow (the continuous adjoint
# is covered by the other tests of this file).
ADJOINTS_CONTINUOUS_SLOW = [pytest.param("continuous", marks=pytest.mark.slow), "discrete"]
TIGHT = dict(rtol=1e-10, atol=1e-12)


def field(t, y, p):
    return -p["a"] * y * jnp.cos(t) + p["b"] * jnp.sin(y[::-1])


@jax.jit(static_argnames="adjoint")
def loss_fn(y0, p, ts, adjoint):
    sol = ode_jax.odeint(field, y0, ts, p, adjoint=adjoint, **TIGHT)
    weights = jnp.arange(1.0, ts.shape[0] + 1)[:, None]
    return jnp.sum(weights * sol.ys**2)


Y0 = jnp.array([1.0, -0.5])
P = {"a": jnp.asarray(0.7), "b": jnp.array([0.3, -0.2])}


def central_fd(fun, x, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        out[i] = (fun(jnp.asarray(x + e)) - fun(jnp.asarray(x - e))) / (2 * eps)
    return out


@pytest.mark.parametrize("adjoint", ADJOINTS)
# Forward in time is also checked against diffrax and analytic gradients elsewhere: slow here.
@pytest.mark.parametrize(
    "ts",
    [pytest.param([0.1, 0.5, 1.2, 2.0], marks=pytest.mark.slow), [2.0, 1.1, 0.3]],
    ids=["fwd", "bwd"],
)
def test_gradients_match_finite_differences(adjoint, ts):
    ts = jnp.array(ts)
    g_y0, g_p, g_ts = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2)), static_argnames="adjoint")(
        Y0, P, ts, adjoint=adjoint
    )
    fd_y0 = central_fd(lambda y: loss_fn(y, P, ts, adjoint=adjoint), Y0)
    fd_a = central_fd(lambda a: loss_fn(Y0, {**P, "a": a}, ts, adjoint=adjoint), P["a"])
    fd_b = central_fd(lambda b: loss_fn(Y0, {**P, "b": b}, ts, adjoint=adjoint), P["b"])
    fd_ts = central_fd(lambda t: loss_fn(Y0, P, t, adjoint=adjoint), ts)
    np.testing.assert_allclose(g_y0, fd_y0, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_p["a"], fd_a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_p["b"], fd_b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_ts, fd_ts, rtol=1e-6, atol=1e-7)
    pairs = dict(y0=(g_y0, fd_y0), a=(g_p["a"], fd_a), b=(g_p["b"], fd_b), ts=(g_ts, fd_ts))
    print(f"\n{adjoint} vs FD, error / max|grad|:", _relative_errors(pairs))


def _relative_errors(pairs: dict) -> str:
    """'name err, ...' with err = max |got - ref| / max |ref| (printed under pytest -s)."""

    def err(got, ref):
        got, ref = np.ravel(got), np.ravel(ref)
        return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))

    return ", ".join(f"{k} {err(*v):.1e}" for k, v in pairs.items())


def _mlp_problem():
    mlp = eqx.nn.MLP(3, 3, 32, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    y0 = jnp.array([0.5, -1.0, 0.25])
    ts = jnp.linspace(0.0, 2.0, 5)
    return mlp, y0, ts


def _ours(mlp, y0, ts, adjoint, **kw):
    sol = ode_jax.odeint(lambda t, y, m: m(y), y0, ts, mlp, adjoint=adjoint, **kw)
    return jnp.sum(sol.ys[1:] ** 2)


def _diffrax(mlp, y0, ts):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, m: m(y)),
        diffrax.Tsit5(),
        ts[0],
        ts[-1],
        None,
        y0,
        args=mlp,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
        adjoint=diffrax.RecursiveCheckpointAdjoint(),
        max_steps=4096,
    )
    return jnp.sum(sol.ys[1:] ** 2)


@pytest.mark.parametrize("adjoint", ADJOINTS_CONTINUOUS_SLOW)
def test_gradients_match_diffrax_for_equinox_mlp(adjoint):
    mlp, y0, ts = _mlp_problem()
    ref_m, ref_y = eqx.filter_grad(lambda my: _diffrax(my[0], my[1], ts))((mlp, y0))
    got_m, got_y = eqx.filter_grad(lambda my: _ours(my[0], my[1], ts, adjoint, **TIGHT))((mlp, y0))
    np.testing.assert_allclose(got_y, ref_y, rtol=1e-6, atol=1e-9)
    for g, r in zip(jax.tree.leaves(got_m), jax.tree.leaves(ref_m)):
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-9)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    pairs = dict(y0=(got_y, ref_y), params=(flat(got_m), flat(ref_m)))
    print(f"\n{adjoint} vs diffrax, error / max|grad|:", _relative_errors(pairs))


def test_continuous_adjoint_evaluates_f_for_time_gradients_only_when_asked():
    # dL/dts costs one evaluation of f per output time in the backward pass; a gradient that
    # does not ask for it (ts a constant) skips them. A callback in f counts its runs.
    count = [0]

    def bump():
        count[0] += 1

    def f(t, y, w):
        jax.debug.callback(bump)
        return jnp.tanh(w @ y) - 0.3 * t * y

    w = jnp.array([[0.2, -1.0], [0.9, 0.1]])
    ts = jnp.linspace(0.0, 2.0, 5)

    def loss(w, ts, probe):
        sol = ode_jax.odeint(
            f, jnp.array([1.0, -0.5]), ts, w, rtol=1e-8, atol=1e-10, adjoint="continuous",
            probe=probe,
        )  # fmt: skip
        return jnp.sum(sol.ys**2)

    runs = {}
    for argnums in ((0, 2), (0, 1, 2)):
        count[0] = 0
        grads = jax.jit(jax.grad(loss, argnums=argnums))(w, ts, ode_jax.make_probe())
        jax.effects_barrier()
        runs[argnums] = (grads, count[0], int(ode_jax.probe_stats(grads[-1])["nfe"]))
    (g_w, _), n_without, nfe_without = runs[(0, 2)]
    (g_w2, g_ts, _), n_with, nfe_with = runs[(0, 1, 2)]
    np.testing.assert_allclose(g_w, g_w2, rtol=1e-12)
    assert np.all(np.isfinite(g_ts)) and np.any(g_ts != 0)
    assert n_with - n_without == ts.shape[0]  # f at each output time
    assert nfe_with - nfe_without == ts.shape[0]  # and the backward statistics say so


def test_closed_over_parameters_get_gradients_under_jit():
    w = jnp.array([[0.0, 1.0], [-1.0, -0.1]])

    @jax.jit
    def loss(w, y0):
        return jnp.sum(ode_jax.odeint(lambda t, y, _: w @ y, y0, jnp.array([0.0, 1.0])).ys[-1])

    y0 = jnp.array([1.0, 0.0])
    g = jax.grad(loss)(w, y0)
    fd = central_fd(lambda w_: loss(w_, y0), w)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


def test_grad_of_grad_continuous_adjoint():
    # y' = -a y  =>  y(1) = y0 exp(-a);  d2/da2 y(1) = y0 exp(-a);  d2/dy0^2 y(1)^2 = 2 exp(-2a)
    def y1(a, y0):
        ts = jnp.array([0.0, 1.0])
        return ode_jax.odeint(lambda t, y, a: -a * y, y0, ts, a, **TIGHT).ys[-1]

    a, y0 = 0.8, 1.5
    np.testing.assert_allclose(jax.grad(jax.grad(y1))(a, y0), y0 * np.exp(-a), rtol=1e-7)
    h = jax.grad(jax.grad(lambda y: y1(a, y) ** 2))(y0)
    np.testing.assert_allclose(h, 2 * np.exp(-2 * a), rtol=1e-7)


def _neural_ode_loss(mlp, probe, adjoint, rtol, atol):
    y0 = jax.random.normal(jax.random.PRNGKey(3), (16, 3))
    sol = ode_jax.odeint(
        lambda t, y, m: jax.vmap(m)(y),
        y0,
        jnp.array([0.0, 5.0]),
        mlp,
        rtol=rtol,
        atol=atol,
        adjoint=adjoint,
        probe=probe,
    )
    return jnp.mean(sol.ys[-1] ** 2), sol.stats


def _grads_and_stats(adjoint, rtol=1e-4, atol=1e-8):
    mlp = eqx.nn.MLP(3, 3, 32, 2, activation=jnp.tanh, key=jax.random.PRNGKey(1))
    mlp = jax.tree.map(lambda x: x * 1.5 if eqx.is_inexact_array(x) else x, mlp)
    grad_fn = eqx.filter_grad(
        lambda mp: _neural_ode_loss(mp[0], mp[1], adjoint, rtol, atol), has_aux=True
    )
    (g, g_probe), fwd = grad_fn((mlp, ode_jax.make_probe()))
    return g, ode_jax.probe_stats(g_probe), fwd


def test_seminorm_same_gradient_fewer_backward_steps():
    # A ReLU MLP under a summed loss: the parameter adjoint's error limits the backward steps
    # under the full norm (benchmarks/controller_study.md: ReLU MLPs 825 -> 327 backward
    # evaluations at rtol 1e-5). On smooth tanh fields the two norms take about as many.
    mlp = eqx.nn.MLP(8, 8, 32, 2, activation=jax.nn.relu, key=jax.random.key(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    y0 = jax.random.normal(jax.random.key(1), (64, 8))

    def grad_and_nfe(seminorm):
        def loss(pp):
            p, probe = pp
            sol = ode_jax.odeint(
                lambda t, y, q: jax.vmap(eqx.combine(q, static))(y), y0, jnp.array([0.0, 1.0]),
                p, rtol=1e-5, atol=1e-5, probe=probe,
                adjoint=ode_jax.ContinuousAdjoint(seminorm=seminorm),
            )  # fmt: skip
            return jnp.sum(sol.ys[-1] ** 2)

        g, g_probe = jax.grad(loss)((params, ode_jax.make_probe()))
        return g, int(ode_jax.probe_stats(g_probe)["nfe"])

    (g_full, nfe_full), (g_semi, nfe_semi) = grad_and_nfe(False), grad_and_nfe(True)
    for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_semi)):
        # Measured: 7e-4 of the largest entry apart (both about rtol-accurate).
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * float(jnp.max(jnp.abs(a))))
    # Measured: 517 against 259.
    assert nfe_semi < 0.75 * nfe_full, (nfe_semi, nfe_full)


def test_adjoints_agree_and_report_backward_stats():
    g_cont, bwd_cont, fwd = _grads_and_stats("continuous", rtol=1e-7, atol=1e-9)
    g_disc, bwd_disc, fwd_d = _grads_and_stats("discrete", rtol=1e-7, atol=1e-9)
    for a, b in zip(jax.tree.leaves(g_cont), jax.tree.leaves(g_disc)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * float(jnp.max(jnp.abs(a))))
    # The discrete adjoint walks back exactly the accepted forward steps.
    assert int(bwd_disc["num_steps"]) == int(fwd_d["num_accepted"])
    # Per step: dopri5's stages, then one VJP each. The one output (t = 5) is the last step's
    # end state, so no step evaluates the FSAL stage, which only the dense output needs. Few
    # steps, so every state is checkpointed and nothing is recomputed.
    assert int(bwd_disc["nfe"]) == 2 * 6 * int(fwd_d["num_accepted"])
    assert int(bwd_cont["nfe"]) > 0 and int(bwd_cont["num_steps"]) > 0


def test_discrete_adjoint_keep_stages_same_gradient_half_the_evaluations():
    # keep_stages=True pulls each step back through one jax.vjp of the whole step: f runs
    # once per stage. False recomputes the stages, then takes a VJP of each: f runs twice. A
    # callback in f counts its executions. The default keeps them.
    w = jnp.array([[0.3, -1.1, 0.4], [0.7, 0.2, -0.5], [0.1, 0.9, -0.3]])
    count = [0]

    def bump():
        count[0] += 1

    def f(t, y, w):
        jax.debug.callback(bump)
        return jnp.tanh(w @ y) + jnp.sin(t) * y

    def loss(w, ts, keep):
        sol = ode_jax.odeint(
            f, jnp.array([0.5, -0.8, 0.3]), ts, w, rtol=1e-7, atol=1e-9,
            adjoint=ode_jax.DiscreteAdjoint(keep_stages=keep),
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2), sol.stats["num_accepted"]

    ts = jnp.array([0.0, 3.0])
    runs = {}
    for keep, wrt in [(None, 0), (True, 0), (False, 0), (True, (0, 1)), (False, (0, 1))]:
        count[0] = 0
        _, n = jax.jit(loss, static_argnums=2)(w, ts, keep)
        jax.effects_barrier()
        forward = count[0]
        count[0] = 0
        g, _ = jax.jit(jax.grad(loss, wrt, has_aux=True), static_argnums=2)(w, ts, keep)
        jax.effects_barrier()
        runs[keep, wrt] = (g if wrt == 0 else g[0], count[0] - forward, int(n))
    g_keep, backward_keep, n = runs[True, 0]
    # Per step dopri5's 6 stages. The FSAL 7th feeds only the dense output: no step needs it
    # when the one output is the last step's end state, and ts is not differentiated.
    assert backward_keep == 6 * n
    assert runs[None, 0][1] == backward_keep
    assert runs[False, 0][1] == 2 * backward_keep
    # Differentiating ts too, the output is interpolated in the step that writes it (theta =
    # 1, for dL/dts): that step also runs the 7th stage.
    assert runs[True, (0, 1)][1] == 6 * (n - 1) + 7
    assert runs[False, (0, 1)][1] == 2 * runs[True, (0, 1)][1]
    for key, run in runs.items():
        np.testing.assert_allclose(run[0], g_keep, rtol=1e-12, atol=1e-14, err_msg=str(key))


@pytest.mark.parametrize("bad", [1, "yes", 0.0])
def test_discrete_adjoint_keep_stages_rejects_non_bools(bad):
    with pytest.raises(ValueError, match="keep_stages"):
        ode_jax.DiscreteAdjoint(keep_stages=bad)


@pytest.mark.parametrize(
    "checkpoints",
    [2, pytest.param(4, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)],
)
def test_discrete_adjoint_exact_with_few_checkpoints(checkpoints):
    # A solve of ~50 steps stored in a handful of states must give the same gradient.
    A = jnp.array([[-0.1, 3.0], [-3.0, -0.1]])

    def loss(y0, ck):
        sol = ode_jax.odeint(
            lambda t, y, A: A @ y, y0, jnp.linspace(0, 10, 7), A,
            adjoint=ode_jax.DiscreteAdjoint(checkpoints=ck), rtol=1e-7, atol=1e-9, max_steps=512,
        )  # fmt: skip
        return jnp.sum(sol.ys**2), sol.stats["num_accepted"]

    y0 = jnp.array([1.0, 0.0])
    g_ref, n = jax.grad(loss, has_aux=True)(y0, 512)
    g, _ = jax.grad(loss, has_aux=True)(y0, checkpoints)
    assert int(n) > 4 * checkpoints
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


def test_discrete_adjoint_recomputes_long_segments_in_chunks():
    # max_steps 128 with 2 checkpoints: segments of up to 64 steps, walked back in chunks of
    # 16 recomputed from the segment's checkpoint. A solve of 40-64 steps has segments of 32
    # steps (2 chunks: the last is recomputed from the checkpoint through the first chunk,
    # then the first) and a shorter last one. Same gradient as with every state stored; the
    # backward evaluations count the steps rerun.
    A = jnp.array([[-0.1, 3.0], [-3.0, -0.1]])

    def loss(y0, probe, ck, max_steps):
        sol = ode_jax.odeint(
            lambda t, y, A: A @ y, y0, jnp.array([0.0, 6.0]), A, probe=probe,
            adjoint=ode_jax.DiscreteAdjoint(checkpoints=ck), rtol=1e-5, atol=1e-7,
            max_steps=max_steps,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2), sol.stats["num_accepted"]

    def grad(ck, max_steps):
        fn = jax.grad(loss, (0, 1), has_aux=True)
        (g, g_probe), n = fn(jnp.array([1.0, 0.0]), ode_jax.make_probe(), ck, max_steps)
        return g, int(ode_jax.probe_stats(g_probe)["nfe"]), int(n)

    g_ref, nfe_ref, n = grad(128, 128)
    g, nfe, _ = grad(2, 128)
    assert 32 < n <= 64, n
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
    # Every state stored: each step's 6 stages and their VJPs, nothing rerun.
    assert nfe_ref == 2 * 6 * n

    def reruns(length):  # steps rerun to walk back a segment of `length` steps
        chunks = [(c, min(16, length - 16 * c)) for c in range(-(-length // 16))]
        return sum(16 * c + size - 1 for c, size in chunks)

    assert nfe == 2 * 6 * n + 6 * (reruns(32) + reruns(n - 32))


@pytest.mark.parametrize("adjoint", ADJOINTS_CONTINUOUS_SLOW)
def test_vmap_per_example_gradients(adjoint):
    mlp, _, ts = _mlp_problem()
    y0s = jax.random.normal(jax.random.PRNGKey(2), (3, 3))
    per_example = eqx.filter_jit(
        eqx.filter_vmap(eqx.filter_grad(lambda m, y: _ours(m, y, ts, adjoint)), in_axes=(None, 0))
    )(mlp, y0s)
    for i in range(3):
        single = eqx.filter_grad(lambda m, y: _ours(m, y, ts, adjoint))(mlp, y0s[i])
        for a, b in zip(jax.tree.leaves(per_example), jax.tree.leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("adjoint", ADJOINTS_CONTINUOUS_SLOW)
def test_float32_gradients(adjoint):
    ts = jnp.array([0.0, 0.5, 1.0], jnp.float32)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), P)
    y32 = Y0.astype(jnp.float32)

    def loss(y0, p, ts):
        sol = ode_jax.odeint(field, y0, ts, p, adjoint=adjoint, rtol=1e-5, atol=1e-6)
        return jnp.sum(sol.ys**2)

    g32 = jax.jit(jax.grad(loss, argnums=(0, 1)))(y32, p32, ts)
    g64 = jax.grad(loss, argnums=(0, 1))(Y0, P, ts.astype(jnp.float64))
    for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g64)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def _temp_bytes(adjoint, t1):
    A = jnp.array([[-0.01, 2.0], [-2.0, -0.01]])
    mlp = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0))

    params, static = eqx.partition(mlp, eqx.is_array)

    def loss(params, y0):
        f = lambda t, y, m: A @ y + 0.01 * m(y)
        m = eqx.combine(params, static)
        sol = ode_jax.odeint(f, y0, jnp.array([0.0, t1]), m, adjoint=adjoint, max_steps=20000)
        return jnp.sum(sol.ys[-1] ** 2), sol.stats["num_steps"]

    grad = jax.jit(jax.grad(loss, has_aux=True))
    y0 = jnp.ones((2,))
    _, steps = grad(params, y0)
    compiled = grad.lower(params, y0).compile()
    return compiled.memory_analysis().temp_size_in_bytes, int(steps)


def test_continuous_adjoint_memory_flat_in_number_of_steps():
    mem_short, steps_short = _temp_bytes("continuous", 10.0)
    mem_long, steps_long = _temp_bytes("continuous", 100.0)
    disc_short, _ = _temp_bytes("discrete", 10.0)
    disc_long, _ = _temp_bytes("discrete", 100.0)
    print(
        f"\nsteps {steps_short} -> {steps_long}; continuous temp bytes {mem_short} -> {mem_long}; "
        f"discrete temp bytes {disc_short} -> {disc_long}"
    )
    assert steps_long > 5 * steps_short
    assert mem_long == mem_short


def test_backward_failure_raises_with_clear_message():
    def loss(y0):
        sol = ode_jax.odeint(
            lambda t, y, _: -y,
            y0,
            jnp.array([0.0, 5.0]),
            rtol=1e-8,
            adjoint=ode_jax.ContinuousAdjoint(max_steps=2),
        )
        return jnp.sum(sol.ys[-1])

    with pytest.raises(Exception, match="backward"):
        jax.block_until_ready(jax.grad(loss)(jnp.ones(2)))
