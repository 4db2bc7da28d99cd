"""Stiff neural ODE: learn Robertson's chemical kinetics with an implicit solver.

Robertson's reactions A -> B (k1 = 0.04), 2B -> B + C (k2 = 3e7), B + C -> A + C (k3 = 1e4),
from y0 = (1, 0, 0), are observed at log-spaced times between 1e-5 s and 1e5 s. Their rates span
nine orders of magnitude and B never exceeds 3.6e-5, so, following Kim et al. 2021 ("Stiff
Neural Ordinary Differential Equations"), the loss is taken on species scaled by their maximum
over the data, and every solve uses an implicit method (``--solver rodas5``, ``kvaerno5``,
``kvaerno3``). The model knows the three reactions and learns log k1, log k2, log k3 from a
start off by a factor of 3 each: a grey box whose answer is known.

After training, ``compare`` (on by default) runs one training step's solves with an explicit
solver (tsit5) at the same ``max_steps`` and with each implicit solver, ``throw=False``, and
records how far each got and what it cost (``compare.json``, ``compare.csv``).

    python -m experiments.stiff --out runs/stiff                      # --help: every flag
    python -m experiments.stiff --solver kvaerno5 --adjoint continuous --out runs/stiff_k5
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ode_jax
from configs.stiff import SMOKE, StiffConfig
from experiments import common
from experiments.common import report

DTYPE = jnp.float64  # B ~ 1e-5 next to A ~ 1: in float32 kvaerno5's Newton iteration fails
Y0 = (1.0, 0.0, 0.0)
SPECIES = ("A", "B", "C")
TRUTH_SOLVE = dict(solver="kvaerno5", rtol=1e-10, atol=1e-16, max_steps=100_000)
IMPLICIT = ("kvaerno3", "kvaerno5", "rodas5")
COUNTS = ("nfe", "num_steps", "num_jacobians", "num_lu")  # logged forward and backward


def mass_action(y, k):
    """dy/dt of Robertson's kinetics at concentrations y (3,) with rate constants k (3,)."""
    r1, r2, r3 = k[0] * y[0], k[1] * y[1] ** 2, k[2] * y[1] * y[2]
    return jnp.stack([-r1 + r3, r1 - r2 - r3, r2])


class Kinetics(eqx.Module):
    """The three reactions with learnable natural-log rate constants (log k spans 9 decades
    with gradients of comparable size, where k itself would not)."""

    log_k: jax.Array  # (3,)

    @property
    def k(self):
        return jnp.exp(self.log_k)


def field(t, y, model: Kinetics):
    del t
    return mass_action(y, model.k)


def kinetics(k) -> Kinetics:
    return Kinetics(jnp.log(jnp.asarray(k, DTYPE)))


def solve(model, ts, cfg: StiffConfig, *, probe=None, throw=True, **overrides):
    """``model`` integrated from y0 over ``ts`` (numpy, ts[0] = 0) with the config's solver;
    ``overrides`` replace solve settings (solver, tolerances, adjoint, max_steps)."""
    y0 = jnp.asarray(Y0, DTYPE)
    return cfg.solve_settings(**overrides).odeint(field, y0, ts, model, probe=probe, throw=throw)


def times(cfg: StiffConfig) -> tuple[np.ndarray, np.ndarray]:
    """(t_obs (n_obs,), t_val (n_obs - 1,)): log-spaced observation times and their geometric
    midpoints, where the validation loss is measured. numpy, so that odeint checks them at
    trace time."""
    log_t = np.linspace(np.log10(cfg.t_first), np.log10(cfg.t_last), cfg.n_obs)
    return 10.0**log_t, 10.0 ** (0.5 * (log_t[1:] + log_t[:-1]))


def with_t0(t):
    return np.concatenate([[0.0], t])


@functools.lru_cache(maxsize=4)
def dataset(cfg: StiffConfig) -> dict:
    """The true trajectory at the observation and validation times (a tight solve), the noisy
    observations and the species scales s (max over the true observations), numpy float64."""
    t_obs, t_val = times(cfg)
    t_all = np.sort(np.concatenate([t_obs, t_val]))
    sol = solve(kinetics(cfg.k_true), with_t0(t_all), cfg, adjoint="discrete", **TRUTH_SOLVE)
    ys = np.asarray(sol.ys[1:])
    is_obs = np.isin(t_all, t_obs)
    y_obs, y_val = ys[is_obs], ys[~is_obs]
    scale = y_obs.max(axis=0)
    rng = np.random.default_rng(cfg.data_seed)
    noisy = y_obs + cfg.noise * scale * rng.standard_normal(y_obs.shape)
    return dict(y_obs=noisy, y_obs_clean=y_obs, y_val=y_val, scale=scale)


def initial_model(cfg: StiffConfig) -> Kinetics:
    return kinetics(np.asarray(cfg.k_true) * np.asarray(cfg.k_init_factors))


def scaled_mse(pred, target, scale):
    """Mean squared error of the species divided by their scales (each one counts equally)."""
    return jnp.mean(((pred - target) / scale[None]) ** 2)


def predict(model, ts, cfg: StiffConfig):
    """(ys, stats, result) of ``model`` at ``ts`` (ts[0] = 0), throw=False: NaN where the
    solve did not get to."""
    return _predict(model, tuple(float(t) for t in ts), cfg)


@eqx.filter_jit
def _predict(model, ts: tuple, cfg: StiffConfig):
    # ts as a tuple is static under filter_jit, so odeint sees concrete times.
    sol = solve(model, np.asarray(ts), cfg, throw=False)
    return sol.ys, sol.stats, sol.result


def build(cfg: StiffConfig) -> common.Task:
    data = dataset(cfg)
    t_obs, t_val = times(cfg)
    scale, y_obs, y_val = (jnp.asarray(data[k]) for k in ("scale", "y_obs", "y_val"))

    @jax.jit
    def get_batch(key):
        del key  # one trajectory: every step fits all of it
        return {"y": y_obs}

    def loss(model, batch, key, probe):
        del key
        sol = solve(model, with_t0(t_obs), cfg, probe=probe)
        aux = {f"{k}_fwd": sol.stats[k] for k in COUNTS}
        aux.update({f"k{i + 1}": model.k[i] for i in range(3)})
        return scaled_mse(sol.ys[1:], batch["y"], scale), aux

    def evaluate(model):
        ys_obs, stats, _ = predict(model, with_t0(t_obs), cfg)
        ys_val, _, _ = predict(model, with_t0(t_val), cfg)
        out = {
            "train_mse": scaled_mse(ys_obs[1:], y_obs, scale),
            "val_mse": scaled_mse(ys_val[1:], y_val, scale),
            "nfe": stats["nfe"],
            "num_steps": stats["num_steps"],
        }
        return dict(out, **{f"k{i + 1}": model.k[i] for i in range(3)})

    return common.Task(
        lambda key: initial_model(cfg), get_batch, loss, evaluate,
        curve_keys=("val_mse",), backward_stats=COUNTS,
        loss_label="MSE of the scaled species",
    )  # fmt: skip


# --- side by side: explicit vs implicit solvers -------------------------------------------------


def _timed(fn, *args, repeats: int = 3):
    """(output, seconds of the first call (compile + run), median seconds of later calls)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t0)
    return out, first, float(np.median(runs)) if runs else first


def _reached(ts, ys) -> float:
    """The last output time the solve reached (outputs it never reached are NaN)."""
    ok = np.all(np.isfinite(np.asarray(ys)), axis=-1)
    return float(ts[ok][-1]) if ok.any() else float(ts[0])


def training_step_fn(cfg: StiffConfig, solver: str):
    """A jitted ``(model, probe) -> (loss, ys, forward stats, result, backward stats)``: one
    training step's loss and gradient with ``solver``, throw=False."""
    t_obs, _ = times(cfg)
    data = dataset(cfg)
    y_obs, scale = jnp.asarray(data["y_obs"]), jnp.asarray(data["scale"])

    @eqx.filter_jit
    def step(model, probe):
        def objective(model_and_probe):
            model, probe = model_and_probe
            sol = solve(model, with_t0(t_obs), cfg, probe=probe, throw=False, solver=solver)
            return scaled_mse(sol.ys[1:], y_obs, scale), sol

        (value, sol), (_, g_probe) = eqx.filter_value_and_grad(objective, has_aux=True)(
            (model, probe)
        )
        return value, sol.ys, sol.stats, sol.result, ode_jax.probe_stats(g_probe)

    return step


def training_step_cost(cfg: StiffConfig, step, model) -> dict:
    """What one call of ``step`` (:func:`training_step_fn`) did and cost: result, the output
    time reached, forward and backward counts, seconds of the first and of later calls."""
    try:
        out, first, per_call = _timed(step, model, ode_jax.make_probe(DTYPE))
    except Exception as e:  # a solver that cannot run this at all: record why, go on
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    value, ys, fwd, result, bwd = out
    return dict(
        loss=float(value),
        result=int(result),
        result_message=ode_jax.RESULTS.message(int(result)),
        t_reached=_reached(with_t0(times(cfg)[0]), ys),
        **{f"{k}_fwd": int(fwd.get(k, 0)) for k in COUNTS},
        **{f"{k}_bwd": int(bwd[k]) for k in COUNTS},
        first_call_seconds=first,
        seconds_per_step=per_call,
    )


def explicit_long_run(cfg: StiffConfig) -> dict:
    """A forward solve of the true system with the explicit solver and
    ``explicit_max_steps_long`` steps: how far does it get?"""
    t_obs, _ = times(cfg)
    n = cfg.explicit_max_steps_long

    @eqx.filter_jit
    def forward(model):
        kw = dict(solver=cfg.explicit_solver, max_steps=n, adjoint="discrete")
        return solve(model, with_t0(t_obs), cfg, throw=False, **kw)

    sol, _, seconds = _timed(forward, kinetics(cfg.k_true), repeats=1)
    return dict(
        solver=cfg.explicit_solver,
        max_steps=n,
        result=int(sol.result),
        result_message=ode_jax.RESULTS.message(int(sol.result)),
        t_reached=_reached(with_t0(t_obs), sol.ys),
        nfe_fwd=int(sol.stats["nfe"]),
        num_steps_fwd=int(sol.stats["num_steps"]),
        seconds=seconds,
    )


def _unsharded(model):
    """``model`` with its arrays on the default device, unsharded: a trained model's replicated
    arrays would otherwise compile every jitted solve a second time."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)) if eqx.is_array(x) else x, model)


def compare_solvers(cfg: StiffConfig, models: dict) -> dict:
    """Training-step cost of the explicit and each implicit solver at each model in ``models``
    (name -> model), all at the config's max_steps and adjoint, and the explicit long run."""
    models = {name: _unsharded(m) for name, m in models.items()}
    rows = []
    for solver in (cfg.explicit_solver, *IMPLICIT):
        step = training_step_fn(cfg, solver)  # compiled once, for every model
        for name, model in models.items():
            rows.append(dict(model=name, solver=solver, **training_step_cost(cfg, step, model)))
            print("compare:", rows[-1])
    long = explicit_long_run(cfg)
    print("compare, long explicit run:", long)
    return {
        "training_step": rows,
        "explicit_long": long,
        "max_steps": cfg.max_steps,
        "adjoint": repr(cfg.solve_settings().adjoint),
    }


# --- figures and final metrics ------------------------------------------------------------------


def finish(cfg: StiffConfig, task: common.Task, result: common.TrainResult, out: Path) -> dict:
    data = dataset(cfg)
    t_obs, _ = times(cfg)
    model, initial = _unsharded(result.model), initial_model(cfg)
    t_fine = np.logspace(np.log10(cfg.t_first), np.log10(cfg.t_last), 300)
    true_fine = solve(kinetics(cfg.k_true), with_t0(t_fine), cfg, adjoint="discrete",
                      **TRUTH_SOLVE).ys[1:]  # fmt: skip
    curves = {
        "initial guess": predict(initial, with_t0(t_fine), cfg)[0][1:],
        "true": true_fine,
        "learned": predict(model, with_t0(t_fine), cfg)[0][1:],
    }
    plot_fit(out / "fit.png", t_fine, {k: np.asarray(v) for k, v in curves.items()},
             t_obs, data["y_obs"], cfg)  # fmt: skip
    plot_loss(out / "loss.png", result.history, result.evals)
    plot_rates(out / "rates.png", result.history, cfg)
    hist, final = result.history, result.evals[-1]
    metrics = {
        "final_train_mse": final["train_mse"],
        "final_val_mse": final["val_mse"],
        **{
            f"{k}_{d}_per_step": float(np.mean([r[f"{k}_{d}"] for r in hist]))
            for k in COUNTS
            for d in ("fwd", "bwd")
        },
    }
    for i in range(3):
        metrics[f"k{i + 1}"] = float(model.k[i])
        metrics[f"k{i + 1}_true"] = cfg.k_true[i]
        metrics[f"k{i + 1}_init"] = cfg.k_true[i] * cfg.k_init_factors[i]
        metrics[f"k{i + 1}_rel_err"] = abs(float(model.k[i]) / cfg.k_true[i] - 1)
    explicit = None
    if cfg.compare:
        comparison = compare_solvers(cfg, {"initial": initial, "trained": model})
        report.write_json(out / "compare.json", comparison)
        report.write_csv(out / "compare.csv", comparison["training_step"])
        metrics["compare_explicit_long"] = comparison["explicit_long"]
        explicit = next(
            r for r in comparison["training_step"]
            if r["solver"] == cfg.explicit_solver and r["model"] == "initial"
        )  # fmt: skip
    plot_solver_cost(out / "solver_cost.png", hist, cfg, explicit)
    metrics["figures"] = sorted(p.name for p in out.glob("*.png"))
    return metrics


def adjoint_name(cfg: StiffConfig) -> str:
    if cfg.adjoint == "continuous":
        return "continuous adjoint" + (" (interpolating)" if cfg.interpolate else " (backsolve)")
    return "discrete adjoint"


def plot_fit(path, t, curves, t_obs, y_obs, cfg: StiffConfig):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = {"initial guess": dict(color="0.6", ls=":"), "true": dict(color="k", lw=1.5),
              "learned": dict(color="C1", ls="--", lw=1.5)}  # fmt: skip
    for i, ax in enumerate(axes):
        for name, ys in curves.items():
            ax.plot(t, ys[:, i], label=name, **styles[name])
        ax.plot(t_obs, y_obs[:, i], "o", color="C0", ms=3.5, label="observed")
        ax.set(xscale="log", xlabel="time t (s)", title=f"species {SPECIES[i]}")
        ax.set(ylabel=f"concentration of {SPECIES[i]} (mole fraction)")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    noise = f", {cfg.noise:g} relative noise" if cfg.noise else ""
    fig.suptitle(f"Robertson's kinetics: learned rates, {cfg.solver}{noise}", fontsize=10)
    report.save_figure(fig, path)


def plot_loss(path, history, evals):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="training loss")
    ax.plot([r["step"] for r in evals], [r["val_mse"] for r in evals], "o", ms=4,
            label="validation (midpoint times)")  # fmt: skip
    ax.set(xlabel="optimiser step", ylabel="MSE of scaled species (dimensionless)", yscale="log")
    ax.set(title="training curve")
    ax.legend(loc="upper right", fontsize=8)
    report.save_figure(fig, path)


def plot_rates(path, history, cfg: StiffConfig):
    import matplotlib.pyplot as plt

    steps = [0] + [r["step"] for r in history]  # step 0: the initial guess
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i in range(3):
        ratio = [cfg.k_init_factors[i]] + [r[f"k{i + 1}"] / cfg.k_true[i] for r in history]
        ax.plot(steps, ratio, color=f"C{i}", label=f"k{i + 1}")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="truth")
    ax.set(xlabel="optimiser step", ylabel="learned rate / true rate", yscale="log")
    ticks = [0.25, 0.5, 1, 2, 4]
    ax.set_yticks(ticks, [f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set(title="rate constants over training")
    ax.legend(loc="upper right", fontsize=8)
    report.save_figure(fig, path)


def plot_solver_cost(path, history, cfg: StiffConfig, explicit: dict | None):
    """Forward and backward counts per training step: f evaluations and steps (left), Jacobians
    and LU factorisations (right); the explicit solver's forward NFE as a line."""
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    labels = {"nfe": "f evaluations", "num_steps": "steps", "num_jacobians": "Jacobians",
              "num_lu": "LU factorisations"}  # fmt: skip
    for ax, keys in zip(axes, (("nfe", "num_steps"), ("num_jacobians", "num_lu"))):
        for j, k in enumerate(keys):
            for d, ls, name in (("fwd", "-", "forward"), ("bwd", "--", "backward")):
                ax.plot(steps, [r[f"{k}_{d}"] for r in history], color=f"C{j}", ls=ls,
                        label=f"{labels[k]}, {name}")  # fmt: skip
        ax.set(xlabel="optimiser step", ylabel="count per training step")
    if explicit is not None and "nfe_fwd" in explicit:
        note = (f"max_steps = {cfg.max_steps} reached at t = {explicit['t_reached']:.3g} s"
                if explicit["result"] else "finished")  # fmt: skip
        axes[0].axhline(explicit["nfe_fwd"], color="C3", ls=":", lw=1.5,
                        label=f"{explicit['solver']} f evaluations, forward ({note})")  # fmt: skip
    axes[0].set(yscale="log", title="f evaluations and steps")
    axes[1].set(ylim=(0, None), title="Jacobians and LU factorisations")
    if not any(r["num_jacobians_bwd"] for r in history):
        # The discrete adjoint differentiates each step (rodas5) or its stage equations
        # (ESDIRK) with Jacobians that ode_jax's probe does not count.
        note = "backward: the discrete adjoint's Jacobians and LUs are not counted"
        axes[1].text(0.5, 0.06, note, transform=axes[1].transAxes, ha="center", fontsize=8)
    for ax in axes:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7.5, ncol=2)
    fig.suptitle(f"{cfg.solver}, {adjoint_name(cfg)}: work per training step", fontsize=10)
    report.save_figure(fig, path)


def main(argv=None) -> dict:
    # The kinetics need float64 (see DTYPE); set before any array is made.
    jax.config.update("jax_enable_x64", True)
    return common.main(StiffConfig, SMOKE, build, finish, argv)


if __name__ == "__main__":
    common.cli.entry(main)
