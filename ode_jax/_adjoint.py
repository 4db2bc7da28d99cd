"""Reverse-mode gradients of a solve as ``custom_vjp`` rules.

* Continuous adjoint (Chen et al. 2018, Algorithm 1): the forward pass keeps only the outputs.
  The backward pass solves the augmented system [y, a_y, a_theta] backwards between consecutive
  output times with ``odeint`` itself (so it can be differentiated again), restarting y from the
  stored output at each output time and adding that output's cotangent to a_y.
  Time gradients use the identity d/dt[a(t) . f(t, y(t))] = a . df/dt along the adjoint, which
  gives dL/dt_0 = -a(t_0) . f(t_0, y_0) and dL/dt_i = g_i . f(t_i, y_i) (i >= 1) exactly; it is
  equal to integrating the paper's a_t component but costs no extra augmented state.
* Discrete adjoint: the forward loop records every accepted step's (t, dt) and a thinned set of
  states; the backward pass walks the steps in reverse, recomputing each step's stages and
  applying its VJP (and the VJP of every dense output written from it). Step sizes are held
  fixed (the gradient of the computed map for the accepted step sequence).

Backward statistics: every solve takes a float array ``probe`` of shape (4,) whose cotangent is
set to the backward pass's [nfe, num_steps, num_accepted, num_rejected]. Differentiating with
respect to a zero probe therefore reads the statistics out of the gradient: it works under
jit/vmap with no host callbacks, and sums over every solve the probe is passed to.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._control import PIDController, propagates_nonfinite, rms_norm
from ._loop import Recorder, integrate
from ._solution import raise_if_failed
from ._solvers import RungeKutta, combine, dense_weights, looped, stage_matrices


@dataclasses.dataclass(frozen=True)
class AdjointConfig:
    kind: str
    method: RungeKutta
    adjoint_method: RungeKutta
    controller: PIDController
    norm: Callable
    seminorm: bool
    max_steps: int
    adjoint_max_steps: int
    checkpoints: int | None


def make_probe(dtype=None) -> jax.Array:
    """A zero probe; the gradient of a loss w.r.t. it holds the backward-pass statistics."""
    return jnp.zeros((4,), dtype or jnp.result_type(float))


def probe_stats(probe_grad) -> dict:
    """Turn a probe's gradient into {"nfe", "num_steps", "num_accepted", "num_rejected"}."""
    keys = ("nfe", "num_steps", "num_accepted", "num_rejected")
    return {k: jnp.round(probe_grad[..., i]).astype(jnp.int32) for i, k in enumerate(keys)}


def _stats_vector(stats, dtype):
    keys = ("nfe", "num_steps", "num_accepted", "num_rejected")
    return jnp.stack([jnp.asarray(stats[k], dtype) for k in keys])


def _tree_dot(a, b):
    return sum(jnp.real(jnp.sum(x * y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def _add(a, b):
    return jax.tree.map(lambda x, y: x + y, a, b)


def solve_with_adjoint(f, y0, ts, args, tols, probe, config: AdjointConfig):
    """Solve forwards (ts increasing) under a custom_vjp; returns (ys, stats, result)."""
    fconv = eqx.filter_closure_convert(f, ts[0], y0, args)
    diff, static = eqx.partition((fconv, args), eqx.is_inexact_array)

    def vf(t, y, d):
        # Under AD, JAX may hand custom_vjp rules weakly-typed Python scalars; make them arrays
        # again so the closure-converted function sees the avals it was traced with.
        fc, a = eqx.combine(jax.tree.map(jnp.asarray, d), static)
        return fc(t, y, a)

    def forward(y0, ts, d, tols, recorder=None):
        rtol, atol, dt0 = tols[:3]
        return integrate(
            config.method,
            lambda t, y, d_: vf(t, y, d_),
            y0,
            ts,
            d,
            rtol=rtol,
            atol=atol,
            dt0=dt0,
            max_steps=config.max_steps,
            controller=config.controller,
            norm=config.norm,
            recorder=recorder,
        )

    @jax.custom_vjp
    def core(y0, ts, d, tols, probe):
        ys, stats, result, _, dt_next = forward(y0, ts, d, tols)
        return ys, stats, result, dt_next

    if config.kind == "continuous":

        def core_fwd(y0, ts, d, tols, probe):
            # Calling `core` (not the loop) keeps the residual ys differentiable through this
            # same rule, so grad-of-grad works.
            ys, stats, result, dt_next = core(y0, ts, d, tols, probe)
            return (ys, stats, result, dt_next), (ys, ts, d, tols, probe, dt_next)

        def core_bwd(res, cts):
            return _continuous_bwd(vf, config, res, cts[0])

    else:
        n_ck, n_local = _checkpoint_sizes(config.max_steps, config.checkpoints)

        def core_fwd(y0, ts, d, tols, probe):
            recorder = _StepRecorder(config.max_steps, n_ck)
            ys, stats, result, aux, dt_next = forward(y0, ts, d, tols, recorder)
            return (ys, stats, result, dt_next), (y0, ts, d, tols, probe, stats, aux)

        def core_bwd(res, cts):
            return _discrete_bwd(vf, config, n_local, res, cts[0])

    core.defvjp(core_fwd, core_bwd)
    return core(y0, ts, diff, tols, probe)


# ---------------------------------------------------------------------------------------------
# Continuous adjoint.


def _augmented_packing(y, d):
    """(pack, unpack, parts) between the augmented state (y, a_y, a_params) and what the solver
    steps; ``parts`` splits a state-shaped array into its three parts as cheaply as it can.

    When every leaf of y and the parameters shares one dtype, the state is one flat vector, as
    in jax.experimental.ode: each stage's linear combination, error norm and output write is
    then one operation instead of one per leaf, which makes the backward solve's program
    several times smaller (and faster to compile) for a many-leaved model. ``parts`` then gives
    three flat slices (the error norms reduce each in one pass, not one pass per parameter).
    Otherwise the state stays the pytree (y, a_y, a_params).
    """
    leaves = jax.tree.leaves((y, d))
    if len({leaf.dtype for leaf in leaves}) != 1:
        return (lambda *parts: parts), (lambda state: state), (lambda state: state)
    _, unravel_y = ravel_pytree(y)
    _, unravel_d = ravel_pytree(d)
    n_y = sum(leaf.size for leaf in jax.tree.leaves(y))
    dtype = leaves[0].dtype

    def pack(y_, a_y, a_d):
        return jnp.concatenate([ravel_pytree(x)[0].astype(dtype) for x in (y_, a_y, a_d)])

    def parts(state):
        return state[:n_y], state[n_y : 2 * n_y], state[2 * n_y :]

    def unpack(state):
        p_y, p_a, p_d = parts(state)
        return unravel_y(p_y), unravel_y(p_a), unravel_d(p_d)

    return pack, unpack, parts


def _continuous_bwd(vf, config: AdjointConfig, res, g_ys):
    ys, ts, d, tols, probe, dt_forward = res
    n = ts.shape[0]
    adj_rtol, adj_atol = tols[3], tols[4]
    y0 = _take(ys, 0)

    pack, unpack, parts = _augmented_packing(y0, d)

    def backward_field(s, state, d_):
        """The augmented system in the time s = -t: d/ds [y, a_y, a_p] = [-f, a_y df/dy,
        a_y df/dp] (the paper's dynamics [f, -a df/dy, -a df/dp] with time reversed)."""
        y, a_y, _ = unpack(state)
        fy, pull = jax.vjp(lambda y_, dd: vf(-s, y_, dd), y, d_)
        gy, gd = pull(a_y)
        out = pack(jax.tree.map(jnp.negative, fy), gy, gd)
        return jax.tree.map(lambda o, x: o.astype(x.dtype), out, state)

    # As torchdiffeq: the max over the parts [y, a_y, a_params] of each part's RMS, so the many
    # parameter-adjoint entries neither dilute nor dominate the error of y and a_y. The seminorm
    # drops a_params (Kidger et al. 2021), which can then only remove steps; it still carries
    # their non-finiteness (0 * x is NaN exactly where x is not finite), so a blown-up parameter
    # adjoint is rejected, not integrated silently.
    @propagates_nonfinite
    def mixed_norm(err):
        e_y, e_a, e_d = parts(err)
        return jnp.maximum(jnp.maximum(rms_norm(e_y), rms_norm(e_a)), rms_norm(e_d))

    @propagates_nonfinite
    def seminorm(err):
        e_y, e_a, e_d = parts(err)
        blown_up = sum(jnp.real(jnp.sum(0 * x)) for x in jax.tree.leaves(e_d))
        return jnp.maximum(rms_norm(e_y), rms_norm(e_a)) + blown_up

    # One copy of the augmented field (a VJP of f) in the program, not one per stage.
    method = looped(config.adjoint_method)
    backward_config = AdjointConfig(
        kind="continuous",
        method=method,
        adjoint_method=method,
        controller=config.controller,
        norm=seminorm if config.seminorm else mixed_norm,
        seminorm=config.seminorm,
        max_steps=config.adjoint_max_steps,
        adjoint_max_steps=config.adjoint_max_steps,
        checkpoints=None,
    )

    def interval(carry, i):
        a_y, a_d, stats, result, dt = carry
        y_i, g_i = _take(ys, i), _take(g_ys, i)
        a_y = _add(a_y, g_i)
        g_t = _tree_dot(g_i, vf(ts[i], y_i, d))
        # The solve from ts[i] back to ts[i-1], in the time s = -t (solve_with_adjoint steps
        # forwards). It is called directly, not through the public odeint: its arguments are
        # valid by construction, and skipping odeint's run-time checks keeps the program small.
        # It is itself under the continuous adjoint, so grad-of-grad works.
        dt0 = dt if method.adaptive else tols[2]
        ys_b, stats_b, result_b, dt_next = solve_with_adjoint(
            backward_field,
            pack(y_i, a_y, a_d),
            -jnp.stack([ts[i], ts[i - 1]]),
            d,
            (adj_rtol, adj_atol, dt0, adj_rtol, adj_atol),
            jnp.zeros_like(probe),
            backward_config,
        )
        _, a_y, a_d = unpack(_take(ys_b, -1))
        stats = stats + _stats_vector(stats_b, stats.dtype) + jnp.array([1, 0, 0, 0], stats.dtype)
        result = jnp.maximum(result, result_b)
        return (a_y, a_d, stats, result, _usable_dt(dt_next, ts, i)), g_t

    def _usable_dt(dt, ts, i):
        dt = jax.lax.stop_gradient(jnp.asarray(dt, ts.dtype))
        fallback = 1e-2 * jnp.abs(ts[i] - ts[i - 1])
        return jnp.where(jnp.isfinite(dt) & (dt > 0), dt, fallback)

    carry = (
        _zeros_like(y0),
        _zeros_like(d),
        jnp.zeros_like(probe),
        jnp.asarray(0, jnp.int32),
        _usable_dt(dt_forward, ts, n - 1) if n > 1 else jnp.zeros((), ts.dtype),
    )
    if n > 1:
        carry, g_t_rev = jax.lax.scan(interval, carry, jnp.arange(n - 1, 0, -1))
        a_y, a_d, stats, result, _ = carry
        g_t0 = -_tree_dot(a_y, vf(ts[0], y0, d))
        g_ts = jnp.concatenate([g_t0[None].astype(ts.dtype), g_t_rev[::-1].astype(ts.dtype)])
        stats = stats + jnp.array([1, 0, 0, 0], stats.dtype)
    else:
        a_y, a_d, stats, result, _ = carry
        g_ts = jnp.zeros_like(ts)
    a_y = _add(a_y, _take(g_ys, 0))
    a_y = raise_if_failed(a_y, result, prefix="ode_jax backward (adjoint) solve")
    return a_y, g_ts, a_d, _zeros_like(tols), stats


# ---------------------------------------------------------------------------------------------
# Discrete adjoint.


def _checkpoint_sizes(max_steps: int, checkpoints: int | None):
    """(number of stored states K, size S of the segment recompute buffer), K * S >= max_steps."""
    if checkpoints is None:
        checkpoints = 2 ** max(1, math.ceil(math.log2(math.sqrt(max_steps))))
    k = 2 ** max(1, math.ceil(math.log2(checkpoints)))  # power of two: thinning halves it
    k = min(k, 2 ** max(1, math.ceil(math.log2(max_steps))))
    s = 1
    while k * s < max_steps:
        s *= 2
    return k, s


class _StepRecorder(Recorder):
    """Records (t, dt) of every accepted step and y at every ``stride``-th one.

    When the K state slots fill up, every other one is dropped and the stride doubles, so any
    number of steps up to max_steps fits in K states (and segments of at most S = max_steps / K
    steps are recomputed in the backward pass).
    """

    def __init__(self, max_steps, n_ck):
        self.max_steps = max_steps
        self.n_ck = n_ck

    def init(self, y0, ts):
        k = self.n_ck
        return dict(
            step_t=jnp.zeros((self.max_steps + 1,), ts.dtype),  # last slot: scratch for rejects
            step_dt=jnp.zeros((self.max_steps + 1,), ts.dtype),
            ck=jax.tree.map(lambda y: jnp.zeros((k + 1,) + y.shape, y.dtype), y0),
            stride=jnp.asarray(1, jnp.int32),
            out_step=jnp.zeros((ts.shape[0],), jnp.int32),
        )

    def on_accept(self, aux, accept, step, t, dt, y):
        k = self.n_ck
        slot_t = jnp.where(accept, step, self.max_steps)
        step_t = aux["step_t"].at[slot_t].set(t)
        step_dt = aux["step_dt"].at[slot_t].set(dt)
        stride = aux["stride"]
        store = accept & (step % stride == 0)
        thin = store & (step // stride == k)

        def thin_fn(ck_stride):
            ck, s = ck_stride
            ck = jax.tree.map(lambda b: b.at[: k // 2].set(b[0:k:2]), ck)
            return ck, s * 2

        ck, stride = jax.lax.cond(thin, thin_fn, lambda c: c, (aux["ck"], stride))
        slot = jnp.where(store, step // stride, k)  # slot k is scratch
        ck = jax.tree.map(lambda b, v: b.at[slot].set(v), ck, y)
        return dict(step_t=step_t, step_dt=step_dt, ck=ck, stride=stride, out_step=aux["out_step"])

    def on_output(self, aux, index, step):
        return {**aux, "out_step": aux["out_step"].at[index].set(step)}


def _discrete_bwd(vf, config: AdjointConfig, n_local, res, g_ys):
    """Walk the accepted steps backwards, one stage at a time.

    Stages run in a ``fori_loop`` (forwards to rebuild them, backwards for their VJPs), so the
    vector field and its VJP each appear once in the compiled program, whatever the number of
    stages, and only one stage's intermediates are alive at a time.

    For FSAL methods the last stage, f(t + dt, y1), enters only the dense output (its solution
    weight is zero and no other stage uses it), so a step with no output time inside it neither
    evaluates that stage nor takes its VJP: one evaluation and one VJP fewer per such step.
    """
    y0, ts, d, tols, probe, stats, aux = res
    method = config.method
    n_out = ts.shape[0]
    n_acc = stats["num_accepted"]
    stride = aux["stride"]
    step_t, step_dt, ck, out_step = aux["step_t"], aux["step_dt"], aux["ck"], aux["out_step"]
    n_stages = method.stages
    sdtype = probe.dtype
    a_mat, b_vec, c_vec = stage_matrices(method, ts.dtype)

    def axpy(y, dt, x):
        return jax.tree.map(lambda yl, xl: yl + dt.astype(yl.dtype) * xl, y, x)

    def stage_input(y, ks, i, dt):
        return axpy(y, dt, combine(a_mat[i], ks))

    # Stages a step needs: all of them when an output lies in the step, else all but an FSAL
    # method's last one (see the docstring).
    n_needed = n_stages - 1 if method.fsal else n_stages

    def n_evals(has_output):
        return jnp.where(has_output, n_stages, n_needed)

    def stages(y, t, dt, n_eval):
        """Stacked stage derivatives (stages, ...) of the step from (t, y) and the new state.

        Only the first ``n_eval`` stages are evaluated; the others are left at zero.
        """
        ks = jax.tree.map(lambda x: jnp.zeros((n_stages,) + x.shape, x.dtype), y)

        def body(i, ks):
            k = vf(t + c_vec[i] * dt, stage_input(y, ks, i, dt), d)
            return jax.tree.map(lambda buf, v: buf.at[i].set(v), ks, k)

        ks = jax.lax.fori_loop(0, n_eval, body, ks)
        y1 = axpy(y, dt, combine(b_vec, ks))
        return y1, ks

    def dense_w(theta, derivative=False):
        w = dense_weights(method, theta, derivative=derivative)
        return jnp.stack([jnp.asarray(x, ts.dtype) for x in w])

    def step_vjp(y, t, dt, ct_y1, ct_ks, ks, n_eval):
        """Cotangents of (y, d, t) of the step given those of y1 and of the first ``n_eval``
        stages (the others must have zero cotangent)."""
        # y1 = y + dt * sum_i b_i k_i
        ct_ks = jax.tree.map(
            lambda c, a: c + (dt * b_vec).astype(a.dtype).reshape((-1,) + (1,) * a.ndim) * a,
            ct_ks,
            ct_y1,
        )

        def body(r, carry):
            i = n_stages - 1 - r
            ct_ks, ct_y, ct_d, ct_t = carry
            yi = stage_input(y, ks, i, dt)
            _, pull = jax.vjp(lambda y_, d_, t_: vf(t_, y_, d_), yi, d, t + c_vec[i] * dt)
            g_yi, g_d, g_t = pull(_take(ct_ks, i))
            # y_i = y + dt * sum_j a_ij k_j
            ct_ks = jax.tree.map(
                lambda c, g: c + (dt * a_mat[i]).astype(g.dtype).reshape((-1,) + (1,) * g.ndim) * g,
                ct_ks,
                g_yi,
            )
            return ct_ks, _add(ct_y, g_yi), _add(ct_d, g_d), ct_t + g_t

        init = (ct_ks, ct_y1, _zeros_like(d), jnp.zeros((), ts.dtype))
        _, ct_y, ct_d, ct_t = jax.lax.fori_loop(n_stages - n_eval, n_stages, body, init)
        return ct_y, ct_d, ct_t

    def segment(carry):
        j, a_y, a_d, g_ts, oi, nfe, local = carry
        start = j * stride
        end = jnp.minimum(start + stride, n_acc)
        local = jax.tree.map(lambda buf, b: buf.at[0].set(b[j]), local, ck)

        def recompute(c):
            m, local = c
            n = start + m - 1
            y1, _ = stages(_take(local, m - 1), step_t[n], step_dt[n], n_needed)
            return m + 1, jax.tree.map(lambda buf, v: buf.at[m].set(v), local, y1)

        _, local = jax.lax.while_loop(lambda c: c[0] < end - start, recompute, (1, local))
        nfe = nfe + (end - start - 1) * n_needed

        def has_output(oi, n):
            return (oi >= 1) & (out_step[jnp.maximum(oi, 0)] == n)

        def walk(c):
            n, a_y, a_d, g_ts, oi, nfe = c
            t_n, dt_n = step_t[n], step_dt[n]
            y_n = _take(local, n - start)
            n_eval = n_evals(has_output(oi, n))
            _, ks = stages(y_n, t_n, dt_n, n_eval)

            def out_cond(c2):
                return has_output(c2[0], n)

            def out_body(c2):
                # Output oi = y_n + dt_n * sum_i w_i(theta) k_i with theta = (ts[oi] - t_n) / dt_n.
                oi, ct_y, ct_ks, g_ts, g_tn = c2
                g = _take(g_ys, oi)
                theta = (ts[oi] - t_n) / dt_n
                w, dw = dense_w(theta), dense_w(theta, derivative=True)
                ct_ks = jax.tree.map(
                    lambda c, gl: (
                        c + (dt_n * w).astype(gl.dtype).reshape((-1,) + (1,) * gl.ndim) * gl
                    ),
                    ct_ks,
                    g,
                )
                g_theta = _tree_dot(g, combine(dw, ks))  # dL/dts[oi]; t_n gets the negative
                g_ts = g_ts.at[oi].add(g_theta.astype(g_ts.dtype))
                return oi - 1, _add(ct_y, g), ct_ks, g_ts, g_tn - g_theta

            init = (oi, _zeros_like(y_n), _zeros_like(ks), g_ts, jnp.zeros((), ts.dtype))
            oi, ct_y, ct_ks, g_ts, g_tn = jax.lax.while_loop(out_cond, out_body, init)
            gy, gd, gt = step_vjp(y_n, t_n, dt_n, a_y, ct_ks, ks, n_eval)
            a_y = _add(gy, ct_y)
            a_d = _add(a_d, gd)
            g_ts = g_ts.at[0].add((gt + g_tn).astype(g_ts.dtype))  # t_n = ts[0] + sum of dts
            return n - 1, a_y, a_d, g_ts, oi, nfe + 2 * n_eval

        _, a_y, a_d, g_ts, oi, nfe = jax.lax.while_loop(
            lambda c: c[0] >= start, walk, (end - 1, a_y, a_d, g_ts, oi, nfe)
        )
        return j - 1, a_y, a_d, g_ts, oi, nfe, local

    n_seg = (n_acc + stride - 1) // stride
    init = (
        n_seg - 1,
        _zeros_like(y0),
        _zeros_like(d),
        jnp.zeros_like(ts),
        jnp.asarray(n_out - 1, jnp.int32),
        jnp.asarray(0, jnp.int32),
        # States of the segment being walked back, recomputed from its checkpoint; allocated
        # once and carried, not re-zeroed per segment.
        jax.tree.map(lambda b: jnp.zeros((n_local,) + b.shape[1:], b.dtype), ck),
    )
    _, a_y, a_d, g_ts, _, nfe, _ = jax.lax.while_loop(lambda c: c[0] >= 0, segment, init)
    a_y = _add(a_y, _take(g_ys, 0))
    probe_ct = jnp.stack(
        [nfe.astype(sdtype), n_acc.astype(sdtype), n_acc.astype(sdtype), jnp.zeros((), sdtype)]
    )
    return a_y, g_ts, a_d, _zeros_like(tols), probe_ct
