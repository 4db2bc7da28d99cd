"""ConcatConv2d against lax.conv_general_dilated on the explicitly time-concatenated input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ode_jax.nn._conv import ConcatConv2d, resolve_impl


def _reference(conv, t, x_NHWC):
    tt = jnp.full(x_NHWC.shape[:-1] + (1,), t, x_NHWC.dtype)
    out = lax.conv_general_dilated(
        jnp.concatenate([tt, x_NHWC], axis=-1),
        conv.weight,
        window_strides=(conv.stride, conv.stride),
        padding=((conv.padding, conv.padding),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return out if conv.bias is None else out + conv.bias.reshape(1, 1, 1, -1)


_slow = pytest.mark.slow  # the first two cases cover stride 1 and 2 with padding and bias
CASES = [
    # in, out, kernel, stride, padding, bias, (H, W)
    (3, 5, 3, 1, 1, True, (6, 6)),
    (4, 2, 3, 2, 1, True, (7, 6)),  # ODE-Net downsampling: stride 2, odd size
    pytest.param((2, 3, 4, 2, 1, False, (8, 8)), marks=_slow),
    pytest.param((3, 4, 1, 1, 0, True, (5, 4)), marks=_slow),
    pytest.param((2, 2, 3, 1, 0, True, (5, 5)), marks=_slow),  # no padding: t is the full sum
]


@pytest.mark.parametrize("impl", ["matmul", "native"])
@pytest.mark.parametrize("case", CASES)
def test_matches_lax_conv_values_and_grads(impl, case):
    cin, cout, k, s, p, bias, (h, w) = case
    kc, kx = jax.random.split(jax.random.key(0))
    conv = ConcatConv2d(cin, cout, k, s, p, bias, key=kc, impl=impl)
    x = jax.random.normal(kx, (2, h, w, cin))
    t = jnp.asarray(0.7)
    out = conv(t, x)
    ref = _reference(conv, t, x)
    assert out.shape == ref.shape == (2, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, cout)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)

    cot = jax.random.normal(jax.random.key(1), out.shape)

    def loss(fn):
        return lambda c, t, x: jnp.sum(fn(c, t, x) * cot)

    grads = jax.grad(loss(lambda c, t, x: c(t, x)), argnums=(0, 1, 2))(conv, t, x)
    grads_ref = jax.grad(loss(_reference), argnums=(0, 1, 2))(conv, t, x)
    for g, gr in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, gr, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("impl", ["matmul", "native"])
def test_unbatched_jit_and_float32(impl):
    conv = ConcatConv2d(3, 4, key=jax.random.key(2), impl=impl, dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(3), (5, 5, 3), jnp.float32)
    out = eqx.filter_jit(lambda c, t, x: c(t, x))(conv, jnp.float32(0.3), x)
    assert out.shape == (5, 5, 4) and out.dtype == jnp.float32
    ref = _reference(conv, 0.3, x[None])[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_impl_choice_and_errors():
    assert resolve_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "native")
    with pytest.raises(ValueError, match="impl"):
        ConcatConv2d(2, 2, key=jax.random.key(0), impl="fft")
    with pytest.raises(ValueError, match="stride"):
        ConcatConv2d(2, 2, stride=0, key=jax.random.key(0))
    conv = ConcatConv2d(2, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="channels-last"):
        conv(0.0, jnp.zeros((1, 2, 5, 5)))  # NCHW by mistake


def test_torch_default_init_bounds():
    conv = ConcatConv2d(8, 16, 3, key=jax.random.key(0))
    bound = 1 / np.sqrt(9 * 9)
    assert conv.weight.shape == (3, 3, 9, 16)
    assert float(jnp.max(jnp.abs(conv.weight))) <= bound
    assert float(jnp.max(jnp.abs(conv.bias))) <= bound


def test_matmul_form_forward_mode_second_order_and_what_its_vjp_keeps():
    # Stride 1 is one matmul of the column shifts with all kernel rows at once: forward mode
    # and second derivatives agree with the reference too, and reverse mode keeps the column
    # shifts once, not a row-shifted copy per kernel row.
    conv = ConcatConv2d(3, 4, key=jax.random.key(4), impl="matmul")
    x = jax.random.normal(jax.random.key(5), (2, 6, 6, 3))
    dx = jax.random.normal(jax.random.key(6), x.shape)
    t = jnp.asarray(0.3)
    _, tan = jax.jvp(lambda x: conv(t, x), (x,), (dx,))
    _, tan_ref = jax.jvp(lambda x: _reference(conv, t, x), (x,), (dx,))
    np.testing.assert_allclose(tan, tan_ref, rtol=1e-12, atol=1e-12)

    def hvp(fn):
        loss = lambda x: jnp.sum(jnp.tanh(fn(x)))  # noqa: E731
        return jax.jvp(jax.grad(loss), (x,), (dx,))[1]

    np.testing.assert_allclose(
        hvp(lambda x: conv(t, x)), hvp(lambda x: _reference(conv, t, x)), rtol=1e-10, atol=1e-12
    )

    def kept(x):
        inputs = {id(a) for a in jax.tree.leaves((x, conv))}
        res = jax.vjp(lambda c, x: c(t, x), conv, x)[1]
        return [r for r in jax.tree.leaves(res) if id(r) not in inputs]

    shapes = [r.shape for r in jax.eval_shape(kept, x)]
    # The column shifts as (n * (h + 2) * w, kw * c), once; no row-shifted (n * h * w, kw * c)
    # copy per kernel row.
    assert shapes.count((2 * 8 * 6, 3 * 3)) == 1, shapes
    assert (2 * 6 * 6, 3 * 3) not in shapes, shapes
