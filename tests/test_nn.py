"""ode_jax.nn: every module under jit, vmap and grad, plus what each one computes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax
from ode_jax import nn

KEY = jax.random.key(0)


def _modules():
    """(name, module, example input builder) for every time-conditioned layer and field."""
    k = jax.random.split(KEY, 6)
    return {
        "concat_linear": (nn.ConcatLinear(3, 4, key=k[0]), (5, 3)),
        "concatsquash_linear": (nn.ConcatSquashLinear(3, 4, key=k[1]), (5, 3)),
        "plain_linear": (nn.PlainLinear(3, 4, key=k[2]), (5, 3)),
        "mlp_none": (nn.MLPField(3, 8, 2, key=k[3]), (5, 3)),
        "mlp_concat": (nn.MLPField(3, 8, 1, time="concat", key=k[4]), (5, 3)),
        "mlp_concatsquash": (nn.MLPField(3, 8, 1, time="concatsquash", key=k[5]), (5, 3)),
    }


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_time_layers_jit_vmap_grad(name):
    module, shape = MODULES[name]
    x = jax.random.normal(KEY, shape)
    t = jnp.asarray(0.3)
    out = module(t, x)
    assert out.shape[:-1] == shape[:-1] and jnp.all(jnp.isfinite(out))
    np.testing.assert_allclose(eqx.filter_jit(module)(t, x), out, rtol=1e-12)
    # Leading axes are batch axes: vmapping over them gives the same answer.
    np.testing.assert_allclose(jax.vmap(module, in_axes=(None, 0))(t, x), out, rtol=1e-12)
    # Per-sample times by vmap over t too.
    ts = jnp.linspace(0.0, 1.0, shape[0])
    per_t = jax.vmap(module)(ts, x)
    np.testing.assert_allclose(per_t[2], module(ts[2], x[2]), rtol=1e-12)
    grads = eqx.filter_grad(lambda m: jnp.sum(m(t, x) ** 2))(module)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(jnp.all(jnp.isfinite(g)) for g in leaves)
    assert any(jnp.any(g != 0) for g in leaves)


def test_time_dependence():
    x = jnp.ones((2, 3))
    for name, (module, _) in MODULES.items():
        differs = not np.allclose(module(0.0, x), module(1.0, x))
        assert differs == (not name.endswith(("none", "plain_linear"))), name


def test_concatsquash_formula():
    layer = nn.ConcatSquashLinear(2, 3, key=KEY)
    x, t = jnp.array([0.5, -1.0]), 0.7
    want = (layer.linear.weight @ x + layer.linear.bias) * jax.nn.sigmoid(
        layer.gate.weight[:, 0] * t + layer.gate.bias
    ) + layer.shift.weight[:, 0] * t
    np.testing.assert_allclose(layer(t, x), want, rtol=1e-12)


def test_mlp_features_and_dtype():
    field = nn.MLPField(2, 4, 1, features=lambda y: y**3, key=KEY)
    y32 = jnp.ones((3, 2), jnp.float32)
    assert field(0.0, y32).dtype == jnp.float32  # float64 params, float32 state: stays float32
    with pytest.raises(ValueError, match="time="):
        nn.MLPField(2, 4, 1, time="sometimes", key=KEY)


@pytest.mark.parametrize("shape,spatial", [((2, 4, 4, 6), 2), ((4, 4, 6), 2), ((3, 6), 0)])
def test_groupnorm(shape, spatial):
    norm = nn.GroupNorm(3, 6, spatial_dims=spatial)
    norm = eqx.tree_at(lambda n: (n.weight, n.bias), norm, (2 * norm.weight, norm.bias + 1))
    x = jax.random.normal(KEY, shape) * 3 + 1
    out = norm(x)
    assert out.shape == x.shape
    # Reference: per sample, per group of 2 channels, over spatial axes and those channels.
    lead = shape[: len(shape) - spatial - 1]
    xs = np.asarray(x).reshape(lead + (-1, 3, 2))
    axes = (len(lead), len(lead) + 2)
    ref = (xs - xs.mean(axes, keepdims=True)) / np.sqrt(xs.var(axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref.reshape(shape) * 2 + 1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(eqx.filter_jit(norm)(x), out, rtol=1e-12)
    if lead:
        np.testing.assert_allclose(jax.vmap(norm)(x), out, rtol=1e-10, atol=1e-12)
    weights = jnp.arange(6.0).reshape((1,) * (len(shape) - 1) + (6,))
    g = eqx.filter_grad(lambda n: jnp.sum(n(x) * weights))(norm)
    assert jnp.all(jnp.isfinite(g.weight)) and jnp.any(g.weight != 0)


def test_groupnorm_half_precision_sums_in_float32():
    # 8192 values near 100 per group: their float16 sum (about 8e5) overflows float16's range.
    x = (100 + jax.random.normal(KEY, (1, 64, 64, 6))).astype(jnp.float16)
    out = nn.GroupNorm(3, 6)(x)
    assert out.dtype == jnp.float16
    want = nn.GroupNorm(3, 6)(x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=0.05)


def test_groupnorm_bad_shape():
    with pytest.raises(ValueError, match="multiple of groups"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="GroupNorm expects"):
        nn.GroupNorm(3, 6)(jnp.ones((4, 4, 5)))


def _block(adjoint="continuous"):
    field = nn.MLPField(2, 8, 1, time="concat", key=KEY)
    settings = ode_jax.SolveSettings(solver="dopri5", rtol=1e-8, atol=1e-8, adjoint=adjoint)
    return nn.ODEBlock(field, t1=0.5, settings=settings)


def test_odeblock_matches_odeint_and_reports_nfe():
    block = _block()
    y0 = jax.random.normal(KEY, (4, 2))

    @eqx.filter_jit
    def both(block, y0):
        ref = ode_jax.odeint(
            nn.call_field,
            y0,
            jnp.array([0.0, 0.5]),
            block.field,
            solver="dopri5",
            rtol=1e-8,
            atol=1e-8,
        )
        return block.solve(y0), block(y0), ref

    (y1, stats), y1_call, ref = both(block, y0)
    np.testing.assert_allclose(y1, ref.ys[-1], rtol=1e-10)
    np.testing.assert_allclose(y1_call, y1, rtol=1e-12)
    assert int(stats["nfe"]) > 0 and int(stats["nfe"]) == int(ref.stats["nfe"])


@pytest.mark.parametrize("adjoint", ["continuous", "discrete"])
def test_odeblock_jit_vmap_grad(adjoint):
    block = _block(adjoint)
    y0 = jax.random.normal(KEY, (3, 2))
    params, static = eqx.partition(block, eqx.is_inexact_array)
    direction = jax.tree.map(lambda p: jax.random.normal(KEY, p.shape, p.dtype), params)

    def loss(params, probe, s=0.0):
        moved = jax.tree.map(lambda p, d: p + s * d, params, direction)
        return jnp.sum(eqx.combine(moved, static)(y0, probe) ** 2)

    @jax.jit
    def check(params):
        block = eqx.combine(params, static)
        # vmap: each sample its own solve; agrees with the joint solve to tolerance.
        joint, per_sample = block(y0), jax.vmap(block)(y0)
        grads, probe_grad = jax.grad(loss, argnums=(0, 1))(params, ode_jax.make_probe())
        eps = 1e-5
        probe = ode_jax.make_probe()
        fd = (loss(params, probe, eps) - loss(params, probe, -eps)) / (2 * eps)
        ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        return joint, per_sample, probe_grad, fd, ad

    joint, per_sample, probe_grad, fd, ad = check(params)
    np.testing.assert_allclose(per_sample, joint, rtol=1e-6, atol=1e-7)
    assert int(ode_jax.probe_stats(probe_grad)["nfe"]) > 0
    np.testing.assert_allclose(ad, fd, rtol=1e-4)


def test_odeblock_bad_interval():
    with pytest.raises(ValueError, match="t1 > t0"):
        nn.ODEBlock(lambda t, y: y, t1=0.0)


def test_odeblock_settings_and_per_call_overrides():
    loose = nn.ODEBlock(
        _block().field, t1=0.5, settings=ode_jax.SolveSettings(solver="dopri5", rtol=1e-3)
    )
    y0 = jax.random.normal(KEY, (4, 2))
    tight, tight_stats = _block().solve(y0)
    y1, stats = loose.solve(y0, rtol=1e-8, atol=1e-8)  # this call only
    np.testing.assert_allclose(y1, tight, rtol=1e-12)
    assert int(stats["nfe"]) == int(tight_stats["nfe"]) > int(loose.solve(y0)[1]["nfe"])

    # Overrides may be traced: a sweep over tolerances compiles once.
    traces = []

    @eqx.filter_jit
    def nfe(block, tol):
        traces.append(tol)
        return block.solve(y0, rtol=tol, atol=tol)[1]["nfe"]

    sweep = [int(nfe(loose, jnp.asarray(tol))) for tol in (1e-1, 1e-4, 1e-8)]
    assert len(traces) == 1 and sweep == sorted(sweep)
    assert sweep[0] < sweep[-1] == int(tight_stats["nfe"])

    with pytest.raises(TypeError, match="unknown solve setting"):
        loose.solve(y0, rtl=1e-3)
    with pytest.raises(TypeError, match="SolveSettings"):
        nn.ODEBlock(loose.field, settings=dict(rtol=1e-3))
    with pytest.raises(TypeError, match="rtol"):
        nn.ODEBlock(loose.field, rtol=1e-3)  # the former keywords live in the settings


def test_odeblock_adjoint_options_in_settings():
    """ContinuousAdjoint options (here the seminorm) ride in the settings; the gradient agrees
    with the default adjoint's to the solver tolerance."""
    block = _block()
    semi = nn.ODEBlock(
        block.field,
        t1=0.5,
        settings=block.settings.replace(adjoint=ode_jax.ContinuousAdjoint(seminorm=True)),
    )
    y0 = jax.random.normal(KEY, (3, 2))

    def grad(block):
        return eqx.filter_grad(lambda b: jnp.sum(b(y0) ** 2))(block)

    for g, g_semi in zip(jax.tree.leaves(grad(block)), jax.tree.leaves(grad(semi))):
        np.testing.assert_allclose(g_semi, g, rtol=1e-5, atol=1e-8)


def test_odeblock_checkpoints_load_across_settings(tmp_path):
    """Settings are static: a block saved with some settings loads into one with others (as
    checkpoints of models trained before SolveSettings existed do)."""
    saved = _block()
    eqx.tree_serialise_leaves(tmp_path / "block.eqx", saved)
    field = nn.MLPField(2, 8, 1, time="concat", key=jax.random.key(1))
    like = nn.ODEBlock(field, t1=0.5, settings=ode_jax.SolveSettings(solver="bosh3"))
    loaded = eqx.tree_deserialise_leaves(tmp_path / "block.eqx", like)
    assert loaded.settings.solver == "bosh3"
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(a, b)
