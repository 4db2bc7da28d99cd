"""Continuous normalizing flows vs planar normalizing flows on 2-D densities (paper Section 4).

Two tasks, one model family each run:

- ``--task density``: fit q to a known unnormalised target ``exp(-U)`` (Rezende & Mohamed's
  U1-U4) by minimising ``E_q[log q(x) + U(x)] = KL(q||p) - log Z`` with base samples pushed
  through the flow (paper Figure 4). Reported: that loss and the KL (adding ``log Z``).
- ``--task mle``: maximum likelihood on fresh samples of a toy dataset every step (paper
  Figure 5, FFJORD's toys). Reported: NLL of fresh test samples (CNFs evaluated with the exact
  trace), and where the true density is known, its entropy (the best reachable NLL) and the gap.

Models: ``nf`` (K planar layers), ``cnf_planar`` (the paper's CNF, M hidden units),
``cnf_mlp`` (FFJORD's ConcatSquash MLP field, exact or Hutchinson trace).

    python -m experiments.cnf --task density --data U2 --model cnf_planar --width 32 --out runs/x
    python -m experiments.cnf grid density --root runs/cnf [--steps 2000] [config flags...]
    python -m experiments.cnf grid mle --root runs/cnf
    python -m experiments.cnf table --root runs/cnf --out results/cnf
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from configs.cnf import DATASET_NAMES, POTENTIAL_NAMES, SMOKE, CNFConfig
from experiments import common
from experiments.common import report
from ode_jax.data import (
    KNOWN_DENSITY,
    potential,
    potential_log_normalizer,
    sample_toy,
    toy_entropy,
)
from ode_jax.nn import CNF, MLPField, PlanarCNFField, PlanarFlow

DTYPE = jnp.float32
TEST_KEY = 2**20  # the seed of the test samples: one fixed test set for every model and seed
N_SHOW = 2000  # samples drawn in the figures

# The grids: (run name, config overrides). Density matching: the paper's Figure 4 (K, M = 2,
# 8, 32). Maximum likelihood: the paper's Figure 5 widths (64) plus FFJORD's field.
DENSITY_GRID = (
    [(f"nf{k}", dict(model="nf", width=k)) for k in (2, 8, 32)]
    + [(f"cnf_planar{m}", dict(model="cnf_planar", width=m)) for m in (2, 8, 32)]
    + [("nf32_10k", dict(model="nf", width=32, steps=10000))]  # NF steps are cheap: 5x more
)
MLE_GRID = [
    ("nf64", dict(model="nf", width=64)),
    ("cnf_planar64", dict(model="cnf_planar", width=64)),
    ("cnf_mlp_exact", dict(model="cnf_mlp", width=64, divergence="exact")),
    ("cnf_mlp_hutch", dict(model="cnf_mlp", width=64, divergence="hutchinson")),
]
MLE_DATA = ("circles", "moons", "8gaussians", "pinwheel", "checkerboard", "2spirals")
LABELS = {
    "nf": "NF (planar, K={w})",
    "cnf_planar": "CNF (planar, M={w})",
    "cnf_mlp": "CNF (MLP 3x{w}, {div})",
}


def init_flow(cfg: CNFConfig, key):
    """A :class:`PlanarFlow` or a :class:`CNF` as configured."""
    if cfg.model == "nf":
        maps = "base_to_data" if cfg.task == "density" else "data_to_base"
        return PlanarFlow(2, cfg.width, maps=maps, dtype=DTYPE, key=key)
    if cfg.model == "cnf_planar":
        field = PlanarCNFField(2, cfg.width, hyper_width=cfg.hyper_width, dtype=DTYPE, key=key)
    else:
        field = MLPField(2, cfg.width, cfg.depth, time="concatsquash", dtype=DTYPE, key=key)
    return CNF(
        field,
        t1=cfg.t1,
        divergence=cfg.divergence,
        noise=cfg.noise,
        settings=cfg.solve_settings(),
        regulariser=cfg.regulariser(cfg.t1),
    )


def _no_solve():
    return {"nfe": jnp.zeros((), jnp.int32)}


def log_prob(flow, x, key=None, probe=None, exact=False, regularise=False):
    """``(log p(x), stats)`` for either model family (a planar NF has no NFE: 0).

    ``regularise``: a training solve with the CNF's regulariser (``stats["penalties"]``)."""
    if isinstance(flow, PlanarFlow):
        return flow.log_prob(x), _no_solve()
    div = "exact" if exact else None
    return flow.log_prob(x, key=key, probe=probe, divergence=div, regularise=regularise)


def sample(flow, z, key=None, probe=None, exact=False, regularise=False):
    """``(x, log q(x), stats)`` for base samples ``z``."""
    if isinstance(flow, PlanarFlow):
        x, logq = flow.sample_with_log_prob(z)
        return x, logq, _no_solve()
    div = "exact" if exact else None
    return flow.sample_with_log_prob(z, key=key, probe=probe, divergence=div, regularise=regularise)


def objective(flow, batch, cfg: CNFConfig, key=None, probe=None, exact=False, regularise=False):
    """The per-task loss: ``E_q[log q + U]`` (density) or the mean NLL (mle); and the solve's
    stats (``stats["penalties"]`` with ``regularise``)."""
    if cfg.task == "density":
        x, logq, stats = sample(flow, batch["z"], key, probe, exact, regularise)
        per_sample = logq + potential(cfg.data, x)
    else:
        logp, stats = log_prob(flow, batch["x"], key, probe, exact, regularise)
        per_sample = -logp
    return per_sample, stats


def draw(cfg: CNFConfig, key, n: int) -> dict:
    """A batch: base samples (density) or data samples (mle)."""
    if cfg.task == "density":
        return {"z": jax.random.normal(key, (n, 2), DTYPE)}
    return {"x": sample_toy(cfg.data, key, n, DTYPE)}


@functools.lru_cache(maxsize=16)
def reference(cfg: CNFConfig) -> dict:
    """The best reachable value: ``log Z`` of the target (density) or the data entropy (mle)."""
    if cfg.task == "density":
        return {"log_z": potential_log_normalizer(cfg.data, n=301 if cfg.smoke else 1201)}
    if cfg.data in KNOWN_DENSITY:
        n = 1_000_000 if not cfg.smoke else 10_000
        h, se = toy_entropy(cfg.data, jax.random.key(TEST_KEY + 1), n, min(n, 100_000))
        return {"entropy": h, "entropy_se": se}
    return {}


@eqx.filter_jit
def _evaluate(flow, batch, cfg):
    per_sample, stats = objective(flow, batch, cfg, exact=True)
    n = per_sample.shape[0]
    return jnp.mean(per_sample), jnp.std(per_sample) / jnp.sqrt(n), stats["nfe"]


def build(cfg: CNFConfig) -> common.Task:
    test_batch = draw(cfg, jax.random.key(TEST_KEY), cfg.eval_samples)
    ref = reference(cfg)

    def loss(flow, batch, key, probe):
        per_sample, stats = objective(flow, batch, cfg, key, probe, regularise=cfg.reg != "none")
        fit, penalties = jnp.mean(per_sample), stats.get("penalties", {})
        size = per_sample.shape[0] * 2  # the flow's state: (N, 2)
        aux = {"nfe_fwd": stats["nfe"], **({"fit": fit, **penalties} if penalties else {})}
        return fit + cfg.penalty(penalties, size), aux

    def evaluate(flow):
        mean, se, nfe = _evaluate(flow, test_batch, cfg)
        name = "loss" if cfg.task == "density" else "nll"
        out = {f"test_{name}": mean, f"test_{name}_se": se, "nfe": nfe}
        if "log_z" in ref:
            out["kl"] = mean + ref["log_z"]
        if "entropy" in ref:
            out["gap"] = mean - ref["entropy"]
        return out

    return common.Task(
        functools.partial(init_flow, cfg),
        jax.jit(lambda key: draw(cfg, key, cfg.batch_size)),
        loss,
        evaluate,
        curve_keys=(),
    )


def grid_points(cfg: CNFConfig) -> np.ndarray:
    g = np.linspace(-cfg.grid_lim, cfg.grid_lim, cfg.grid_size, dtype=np.float32)
    return np.stack(np.meshgrid(g, g, indexing="xy"), -1)  # (G, G, 2); [i, j] = (g[j], g[i])


def target_density(cfg: CNFConfig, pts) -> np.ndarray:
    """The target on the grid: ``exp(-U)/Z`` (density) or a normalised histogram (mle)."""
    if cfg.task == "density":
        u = np.asarray(potential(cfg.data, jnp.asarray(pts)), np.float64)
        return np.exp(-u - reference(cfg)["log_z"])
    x = np.asarray(sample_toy(cfg.data, jax.random.key(TEST_KEY + 2), 200_000))
    edges = np.linspace(-cfg.grid_lim, cfg.grid_lim, cfg.grid_size + 1)
    hist, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=(edges, edges), density=True)
    return hist


@eqx.filter_jit
def _grid_log_prob(flow, pts):
    return log_prob(flow, pts, exact=True)[0]


@eqx.filter_jit
def _samples(flow, z):
    return sample(flow, z, exact=True)[0]


def finish(cfg: CNFConfig, task: common.Task, result: common.TrainResult, out: Path) -> dict:
    """Density on a grid, samples, transport over time (CNF); figures; summary numbers."""
    flow = result.model
    pts = grid_points(cfg)
    logq = np.asarray(_grid_log_prob(flow, jnp.asarray(pts.reshape(-1, 2)))).reshape(pts.shape[:2])
    z = jax.random.normal(jax.random.key(TEST_KEY + 3), (N_SHOW, 2), DTYPE)
    arrays = dict(
        grid=pts,
        log_q=logq,
        target=target_density(cfg, pts),
        samples=np.asarray(_samples(flow, z)),
    )
    if isinstance(flow, CNF):
        ts = np.linspace(flow.t1, flow.t0, 6, dtype=np.float32)
        arrays["transport_ts"] = ts
        # ts closed over: odeint wants concrete times
        transport = eqx.filter_jit(lambda f, y: f.transport(y, ts)[0])
        arrays["transport"] = np.asarray(transport(flow, z))
        plot_transport(out / "transport.png", cfg, arrays)
    np.savez_compressed(out / "density.npz", **arrays)
    plot_run(out / "density.png", cfg, arrays)
    plot_curve(out / "training_curve.png", cfg, result)  # linear scale: losses can be < 0
    hist = result.history
    timed = max(len(hist) and hist[-1]["step"] - 1, 1)
    train_s = result.timing["train_seconds"] - result.timing["first_step_seconds"]
    tail = hist[-max(1, len(hist) // 10) :]
    return {
        "seconds_per_iter": train_s / timed,
        "nfe_fwd_last": float(np.mean([r["nfe_fwd"] for r in tail])) if tail else 0.0,
        "nfe_bwd_last": float(np.mean([r["nfe_bwd"] for r in tail])) if tail else 0.0,
        "grid_mass": float(np.exp(logq).sum() * (pts[0, 1, 0] - pts[0, 0, 0]) ** 2),
        **reference(cfg),
    }


def _show(ax, dens, lim, title):
    ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
    ax.set(title=title, xticks=[], yticks=[])


def label(cfg: dict) -> str:
    div = "Hutchinson" if cfg["divergence"] == "hutchinson" else "exact"
    return LABELS[cfg["model"]].format(w=cfg["width"], div=div)


def plot_run(path, cfg: CNFConfig, arrays: dict):
    import matplotlib.pyplot as plt

    lim = cfg.grid_lim
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    _show(axes[0], arrays["target"], lim, f"target {cfg.data}")
    _show(axes[1], np.exp(arrays["log_q"]), lim, "model density")
    s = arrays["samples"]
    axes[2].scatter(s[:, 0], s[:, 1], s=1, alpha=0.5)
    axes[2].set(xlim=(-lim, lim), ylim=(-lim, lim), title="model samples", aspect="equal")
    axes[2].set(xticks=[], yticks=[])
    fig.suptitle(f"{label(dataclasses.asdict(cfg))} on {cfg.data}")
    report.save_figure(fig, path)


def plot_curve(path, cfg: CNFConfig, result: common.TrainResult):
    import matplotlib.pyplot as plt

    name = "loss" if cfg.task == "density" else "nll"
    fig, ax = plt.subplots(figsize=(6, 4))
    hist, evals = result.history, result.evals
    ax.plot([r["step"] for r in hist], [r["loss"] for r in hist], label="train loss")
    ax.plot(
        [r["step"] for r in evals], [r[f"test_{name}"] for r in evals], "o-", label=f"test {name}"
    )
    ax.set(xlabel="step", title=f"training curve: {label(dataclasses.asdict(cfg))} on {cfg.data}")
    ax.legend()
    report.save_figure(fig, path)


def plot_transport(path, cfg: CNFConfig, arrays: dict, title: str | None = None):
    """Base samples (left, t = t1) carried by the learned field to the data (right, t = 0)."""
    import matplotlib.pyplot as plt

    xs, ts, lim = arrays["transport"], arrays["transport_ts"], cfg.grid_lim
    fig, axes = plt.subplots(1, len(ts), figsize=(2.2 * len(ts), 2.4))
    colour = np.arctan2(xs[0, :, 1], xs[0, :, 0])  # colour by the base sample's angle
    for ax, x, t in zip(axes, xs, ts):
        ax.scatter(x[:, 0], x[:, 1], s=1, c=colour, cmap="hsv")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"t = {t:.2f}")
    fig.suptitle(title or f"{cfg.data}: samples transported from N(0, I) (t = t1) to data (t = 0)")
    report.save_figure(fig, path)


# -- the grid and the table ------------------------------------------------------------------


def run_grid(argv) -> list:
    """Run every config of a grid that has no ``metrics.json`` yet, one after another."""
    parser = argparse.ArgumentParser(prog="experiments.cnf grid")
    parser.add_argument("task", choices=("density", "mle"))
    parser.add_argument("--root", default="runs/cnf")
    parser.add_argument("--data", default="", help="comma-separated subset of the targets")
    parser.add_argument("--runs", default="", help="comma-separated subset of the run names")
    parser.add_argument("--seed", type=int, default=0, help="seed (folders of seed s > 0: _s<s>)")
    args, extra = parser.parse_known_args(argv)
    names = POTENTIAL_NAMES if args.task == "density" else MLE_DATA
    grid = DENSITY_GRID if args.task == "density" else MLE_GRID
    data = _subset(args.data, names, "--data")
    runs = _subset(args.runs, [n for n, _ in grid], "--runs")
    done = []
    for d in data:
        for name, overrides in grid:
            if name not in runs:
                continue
            out = Path(args.root) / args.task / d / (name + (f"_s{args.seed}" if args.seed else ""))
            if (out / "metrics.json").exists():
                print(f"skip {out} (metrics.json exists)")
                continue
            flags = [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()]
            # The run's own settings come last: they win over the shared flags.
            argv_run = ["--task", args.task, "--data", d, "--seed", str(args.seed), *extra, *flags]
            argv_run += ["--out", str(out)]
            print("run", " ".join(argv_run), flush=True)
            metrics = common.main(CNFConfig, SMOKE, build, finish, argv_run)
            print(f"  {out}: {metrics.get('final_eval')}", flush=True)
            done.append(str(out))
    return done


def _subset(arg: str, known, flag: str) -> list:
    if not arg:
        return list(known)
    chosen = arg.split(",")
    bad = [c for c in chosen if c not in known]
    if bad:
        raise SystemExit(f"error: {flag} {bad} not in {list(known)}")
    return chosen


def collect(root: Path) -> list[dict]:
    """One row per finished run under ``root/<task>/<data>/<name>``."""
    rows = []
    for path in sorted(root.glob("*/*/*/metrics.json")):
        run = path.parent
        cfg = json.loads((run / "config.json").read_text())
        m = json.loads(path.read_text())
        rows.append(
            dict(
                task=cfg["task"],
                data=cfg["data"],
                run=re.sub(r"_s\d+$", "", run.name),  # the grid's name; seeds > 0 add _s<seed>
                seed=cfg["seed"],
                model=label(cfg) + (f", {cfg['steps']} steps" if "_10k" in run.name else ""),
                steps=m["steps"],
                **m["final_eval"],
                nfe_fwd_last=m["nfe_fwd_last"],
                nfe_bwd_last=m["nfe_bwd_last"],
                seconds_per_iter=m["seconds_per_iter"],
                first_step_seconds=m["first_step_seconds"],
                **{k: m[k] for k in ("log_z", "entropy", "entropy_se") if k in m},
                path=str(run),
            )
        )
    return rows


def _cell(row, key, se_key=None):
    if row is None or key not in row:
        return "–"
    if se_key and se_key in row:
        return f"{row[key]:.3f} ± {row[se_key]:.3f}"
    return f"{row[key]:.3f}"


def _table(title, rows, runs, cols, key, se_key=None, cost=True, extra="") -> str:
    """A markdown table: one row per run, one column per target/dataset, ``key`` in the cells."""
    by = {(r["data"], r["run"]): r for r in rows}
    model = {r["run"]: r["model"] for r in rows}
    head = ["Model", *cols] + (["NFE fwd / bwd", "s / iter"] if cost else [])
    lines = [f"{title}\n\n", "| " + " | ".join(head) + " |\n", "|---" * len(head) + "|\n"]
    for n in runs:
        cells = [_cell(by.get((c, n)), key, se_key) for c in cols]
        if cost:
            cells.append(_cost([by[(c, n)] for c in cols if (c, n) in by]))
        lines.append(f"| {model[n]} | " + " | ".join(cells) + " |\n")
    return "".join(lines) + extra + "\n"


def seed_table(rows: list[dict], task: str, key: str, names) -> str:
    """Every seed's ``key`` for the runs that have more than one seed: "seed 0 / seed 1 / ..."."""
    sub = [r for r in rows if r["task"] == task]
    grid = DENSITY_GRID if task == "density" else MLE_GRID
    multi = [n for n, _ in grid if any(r["run"] == n and r["seed"] != 0 for r in sub)]
    if not multi:
        return ""
    cols = [d for d in names if any(r["data"] == d for r in sub)]
    seeds = sorted({r["seed"] for r in sub if r["run"] in multi})
    by = {(r["data"], r["run"], r["seed"]): r for r in sub}
    model = {r["run"]: r["model"] for r in sub}
    lines = [f"{key} for seeds {' / '.join(map(str, seeds))}\n\n"]
    lines += ["| Model | " + " | ".join(cols) + " |\n", "|---" * (len(cols) + 1) + "|\n"]
    for n in multi:
        cells = [" / ".join(_cell(by.get((d, n, sd)), key) for sd in seeds) for d in cols]
        lines.append(f"| {model[n]} | " + " | ".join(cells) + " |\n")
    return "".join(lines) + "\n"


def markdown_tables(rows: list[dict]) -> str:
    """Density matching: KL per target and model; MLE: test NLL, gap, NFE, time per iter.

    The main tables show seed 0; runs with more seeds get a table of every seed's value.
    """
    spread = seed_table(rows, "density", "kl", POTENTIAL_NAMES)
    spread += seed_table(rows, "mle", "test_nll", DATASET_NAMES)
    rows = [r for r in rows if r["seed"] == 0]
    out = []
    for task, grid, names in (
        ("density", DENSITY_GRID, POTENTIAL_NAMES),
        ("mle", MLE_GRID, DATASET_NAMES),
    ):
        sub = [r for r in rows if r["task"] == task]
        runs = [n for n, _ in grid if any(r["run"] == n for r in sub)]
        cols = [d for d in names if any(r["data"] == d for r in sub)]
        if not sub:
            continue
        if task == "density":
            title = "KL(q||p) = E_q[log q + U] + log Z (nats, 8192 fresh samples; lower is better)"
            out.append(_table(title, sub, runs, cols, "kl"))
            continue
        ent = {r["data"]: r for r in sub if "entropy" in r}
        cells = [_cell(ent.get(d), "entropy", "entropy_se") for d in cols]
        extra = "| true entropy (best reachable) | " + " | ".join(cells) + " | | |\n" if ent else ""
        title = "Test NLL (nats, 8192 fresh samples, exact trace; lower is better)"
        out.append(_table(title, sub, runs, cols, "test_nll", "test_nll_se", extra=extra))
        known = [d for d in cols if d in ent]
        if known:
            title = "Gap to the true entropy (test NLL - entropy, nats)"
            out.append(_table(title, sub, runs, known, "gap", cost=False))
    return "".join(out) + spread


def _cost(rows) -> str:
    if not rows:
        return "– | –"
    f = np.mean([r["nfe_fwd_last"] for r in rows])
    b = np.mean([r["nfe_bwd_last"] for r in rows])
    s = np.mean([r["seconds_per_iter"] for r in rows])
    return f"{f:.0f} / {b:.0f} | {s:.3f}"


def plot_grid(path, rows: list[dict], task: str, names: list, datas: list):
    """Target and every model's density side by side, one row per target (Figures 4/5)."""
    import matplotlib.pyplot as plt

    by = {(r["data"], r["run"]): r for r in rows if r["task"] == task}
    names = [n for n in names if any((d, n) in by for d in datas)]
    datas = [d for d in datas if any((d, n) in by for n in names)]
    if not names or not datas:
        return False
    fig, axes = plt.subplots(
        len(datas), len(names) + 1, figsize=(1.9 * (len(names) + 1), 1.9 * len(datas) + 0.3)
    )
    axes = np.atleast_2d(axes)
    for i, d in enumerate(datas):
        for j, n in enumerate([None, *names]):
            ax = axes[i, j]
            row = by.get((d, n)) if n else next(by[(d, m)] for m in names if (d, m) in by)
            if row is None:
                ax.axis("off")
                continue
            arrays = np.load(Path(row["path"]) / "density.npz")
            lim = float(np.abs(arrays["grid"]).max())
            dens = arrays["target"] if n is None else np.exp(arrays["log_q"])
            _show(ax, dens, lim, "")
            if j == 0:
                ax.set_ylabel(d)
    model = {r["run"]: r["model"] for r in by.values()}
    for ax, n in zip(axes[0], [None, *names]):  # titled even where the first row has no run
        ax.set_title("target" if n is None else model[n], fontsize=7)
    report.save_figure(fig, path)
    return True


def write_table(root, out) -> str:
    """Collect finished runs under ``root`` into ``out``: metrics, tables, figures."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(root)
    if not rows:
        raise SystemExit(f"error: no finished runs (metrics.json) under {root}/<task>/<data>/<run>")
    report.write_json(out / "metrics.json", rows)
    report.write_csv(out / "metrics.csv", rows)
    table = markdown_tables(rows)
    (out / "table.md").write_text(table)
    rows = [r for r in rows if r["seed"] == 0]  # the figures show seed 0
    plot_grid(
        out / "density_matching.png",
        rows,
        "density",
        [n for n, _ in DENSITY_GRID],
        list(POTENTIAL_NAMES),
    )
    plot_grid(out / "mle.png", rows, "mle", [n for n, _ in MLE_GRID], list(MLE_DATA))
    plot_transports(out / "transport_density.png", rows, "density", "cnf_planar32")
    plot_transports(out / "transport_mle.png", rows, "mle", "cnf_mlp_hutch")
    configs = {r["path"]: json.loads((Path(r["path"]) / "config.json").read_text()) for r in rows}
    report.write_json(out / "configs.json", configs)
    return table


def plot_transports(path, rows: list[dict], task: str, run: str) -> bool:
    """One row per target: run ``run``'s base samples carried to the data over time."""
    import matplotlib.pyplot as plt

    order = list(POTENTIAL_NAMES) + list(MLE_DATA)
    chosen = [r for r in rows if r["task"] == task and r["run"] == run and r["data"] in order]
    chosen.sort(key=lambda r: order.index(r["data"]))
    if not chosen:
        return False
    arrays = [np.load(Path(r["path"]) / "density.npz") for r in chosen]
    n_t = len(arrays[0]["transport_ts"])
    fig, axes = plt.subplots(len(chosen), n_t, figsize=(1.9 * n_t, 1.9 * len(chosen) + 0.4))
    axes = np.atleast_2d(axes)
    for i, (row, arr) in enumerate(zip(chosen, arrays)):
        xs, lim = arr["transport"], float(np.abs(arr["grid"]).max())
        colour = np.arctan2(xs[0, :, 1], xs[0, :, 0])  # colour by the base sample's angle
        for j, (x, t) in enumerate(zip(xs, arr["transport_ts"])):
            ax = axes[i, j]
            ax.scatter(x[:, 0], x[:, 1], s=0.5, c=colour, cmap="hsv")
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
            if i == 0:
                ax.set_title(f"t = {t:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(row["data"])
    fig.suptitle(f"{chosen[0]['model']}: N(0, I) samples (t = t1) carried to the data (t = 0)")
    report.save_figure(fig, path)
    return True


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["grid"]:
        return run_grid(argv[1:])
    if argv[:1] == ["table"]:
        parser = argparse.ArgumentParser(prog="experiments.cnf table")
        parser.add_argument("--root", default="runs/cnf")
        parser.add_argument("--out", default="results/cnf")
        args = parser.parse_args(argv[1:])
        table = write_table(args.root, args.out)
        print(table)
        return table
    return common.main(CNFConfig, SMOKE, build, finish, argv)


if __name__ == "__main__":
    main()
