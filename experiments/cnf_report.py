"""Tables and figures of the CNF grids (``python -m experiments.cnf table`` / ``figures``).

Reads the finished runs under ``ROOT/<task>/<data>/<run>[_s<seed>]`` (their ``config.json``,
``metrics.json`` and ``density.npz``) and writes ``metrics.{json,csv}``, ``table.md``,
``configs.json`` and the figures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from configs.cnf import DATASET_NAMES, DENSITY_GRID, MLE_DATA, MLE_GRID, POTENTIAL_NAMES
from experiments.common import report
from experiments.common.cli import UserError

LABELS = {
    "nf": "NF (planar, K={w})",
    "cnf_planar": "CNF (planar, M={w})",
    "cnf_mlp": "CNF (MLP 3x{w}, {div})",
}
SHORT = {  # two lines: fits a figure column
    "nf": "planar NF\nK = {w} layers",
    "cnf_planar": "planar CNF\nM = {w} units",
    "cnf_mlp": "MLP CNF 3x{w}\n{div} trace",
}
TRANSPORT_RUNS = {"density": "cnf_planar32", "mle": "cnf_planar64"}  # the best CNF of each task


def label(cfg: dict, short: bool = False) -> str:
    div = "Hutchinson" if cfg["divergence"] == "hutchinson" else "exact"
    return (SHORT if short else LABELS)[cfg["model"]].format(w=cfg["width"], div=div)


def collect(root: Path) -> list[dict]:
    """One row per finished run under ``root/<task>/<data>/<name>``."""
    rows = []
    for path in sorted(Path(root).glob("*/*/*/metrics.json")):
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


# -- tables ------------------------------------------------------------------------------------


def _cell(row, key, se_key=None) -> str:
    if row is None or key not in row:
        return "–"
    if se_key and se_key in row:
        return f"{row[key]:.3f} ± {row[se_key]:.3f}"
    return f"{row[key]:.3f}"


def _cost(rows) -> dict:
    if not rows:
        return {"nfe": "–", "s": "–"}
    f, b = (np.mean([r[k] for r in rows]) for k in ("nfe_fwd_last", "nfe_bwd_last"))
    return {
        "nfe": f"{f:.0f} / {b:.0f}",
        "s": f"{np.mean([r['seconds_per_iter'] for r in rows]):.3f}",
    }


def _table(title, rows, runs, cols, key, se_key=None, cost=True, extra=None) -> str:
    """One row per run, one column per target/dataset, ``key`` in the cells (markdown)."""
    by = {(r["data"], r["run"]): r for r in rows}
    model = {r["run"]: r["model"] for r in rows}
    lines = []
    for n in runs:
        line = {"model": model[n], **{c: _cell(by.get((c, n)), key, se_key) for c in cols}}
        if cost:
            line.update(_cost([by[(c, n)] for c in cols if (c, n) in by]))
        lines.append(line)
    if extra:
        lines.append({"nfe": "", "s": "", **extra})
    columns = [("model", "Model", str)] + [(c, c, str) for c in cols]
    columns += [("nfe", "NFE fwd / bwd", str), ("s", "s / iter", str)] if cost else []
    return f"{title}\n\n{report.markdown_table(lines, columns)}\n\n"


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
    lines = [
        {
            "model": model[n],
            **{d: " / ".join(_cell(by.get((d, n, s)), key) for s in seeds) for d in cols},
        }
        for n in multi
    ]
    columns = [("model", "Model", str)] + [(d, d, str) for d in cols]
    title = f"{key} for seeds {' / '.join(map(str, seeds))}"
    return f"{title}\n\n{report.markdown_table(lines, columns)}\n\n"


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
        if not sub:
            continue
        runs = [n for n, _ in grid if any(r["run"] == n for r in sub)]
        cols = [d for d in names if any(r["data"] == d for r in sub)]
        if task == "density":
            title = "KL(q||p) = E_q[log q + U] + log Z (nats, 8192 fresh samples; lower is better)"
            out.append(_table(title, sub, runs, cols, "kl"))
            continue
        ent = {r["data"]: r for r in sub if "entropy" in r}
        extra = {"model": "true entropy (best reachable)"}
        extra.update({d: _cell(ent.get(d), "entropy", "entropy_se") for d in cols})
        title = "Test NLL (nats, 8192 fresh samples, exact trace; lower is better)"
        out.append(_table(title, sub, runs, cols, "test_nll", "test_nll_se", extra=ent and extra))
        known = [d for d in cols if d in ent]
        if known:
            title = "Gap to the true entropy (test NLL - entropy, nats)"
            out.append(_table(title, sub, runs, known, "gap", cost=False))
    return "".join(out) + spread


# -- figures -----------------------------------------------------------------------------------


def show_density(ax, dens, lim):
    ax.imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
    ax.set(xticks=[], yticks=[])


def _short(row: dict) -> str:
    """The row's model in two short lines (a figure column's title)."""
    cfg = json.loads((Path(row["path"]) / "config.json").read_text())
    steps = f"\n{cfg['steps']} steps" if "_10k" in row["path"] else ""
    return label(cfg, short=True) + steps


def plot_grid(path, rows: list[dict], task: str, names: list, datas: list) -> bool:
    """The target and every model's density side by side, one row per target (Figures 4/5).

    A model with no run on some of the targets is left out (the table has its numbers), so no
    panel is empty."""
    import matplotlib.pyplot as plt

    by = {(r["data"], r["run"]): r for r in rows if r["task"] == task}
    datas = [d for d in datas if any((d, n) in by for n in names)]
    left_out = [n for n in names if any((d, n) in by for d in datas)]
    names = [n for n in left_out if all((d, n) in by for d in datas)]
    left_out = [n for n in left_out if n not in names]
    if not names or not datas:
        return False
    size = 1.9
    fig, axes = plt.subplots(
        len(datas), len(names) + 1, figsize=(size * (len(names) + 1) + 0.4, size * len(datas) + 1.2)
    )
    axes = np.atleast_2d(axes)
    for i, d in enumerate(datas):
        for j, n in enumerate([None, *names]):
            row = by[(d, n or names[0])]
            arrays = np.load(Path(row["path"]) / "density.npz")
            lim = float(np.abs(arrays["grid"]).max())
            show_density(
                axes[i, j], arrays["target"] if n is None else np.exp(arrays["log_q"]), lim
            )
            if n is not None and task == "mle":
                axes[i, j].set_xlabel(f"NLL {row['test_nll']:.2f}", fontsize=9, labelpad=2)
            elif n is not None:
                axes[i, j].set_xlabel(f"KL {row['kl']:.2f}", fontsize=9, labelpad=2)
        axes[i, 0].set_ylabel(d, fontsize=11)
    for ax, n in zip(axes[0], [None, *names]):
        ax.set_title("target" if n is None else _short(by[(datas[0], n)]), fontsize=9)
    what = "histogram of samples" if task == "mle" else "exp(-U)/Z"
    metric = "test NLL" if task == "mle" else "KL(q||p)"
    title = f"target ({what}) and model densities on [-{lim:g}, {lim:g}]², seed 0;"
    title += f" under each model: its {metric} (nats)"
    if left_out:
        shown = ", ".join(by[next(k for k in by if k[1] == n)]["model"] for n in left_out)
        title += f"\nnot shown (not run on every target; see table.md): {shown}"
    fig.suptitle(title, fontsize=10)
    report.save_figure(fig, path)
    return True


def plot_transports(path, rows: list[dict], task: str, run: str) -> bool:
    """One row per target: run ``run``'s base samples carried to the data over time."""
    import matplotlib.pyplot as plt

    order = list(POTENTIAL_NAMES) + list(MLE_DATA)
    chosen = [r for r in rows if r["task"] == task and r["run"] == run and r["data"] in order]
    chosen.sort(key=lambda r: order.index(r["data"]))
    if not chosen:
        return False
    arrays = [np.load(Path(r["path"]) / "density.npz") for r in chosen]
    n_t, t1 = len(arrays[0]["transport_ts"]), float(arrays[0]["transport_ts"][0])
    fig, axes = plt.subplots(len(chosen), n_t, figsize=(1.9 * n_t + 0.4, 1.9 * len(chosen) + 0.9))
    axes = np.atleast_2d(axes)
    metric = "test_nll" if task == "mle" else "kl"
    for i, (row, arr) in enumerate(zip(chosen, arrays)):
        xs, lim = arr["transport"], float(np.abs(arr["grid"]).max())
        colour = np.arctan2(xs[0, :, 1], xs[0, :, 0])  # colour by the base sample's angle
        for j, (x, t) in enumerate(zip(xs, arr["transport_ts"])):
            ax = axes[i, j]
            ax.scatter(x[:, 0], x[:, 1], s=0.5, c=colour, cmap="hsv")
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
            if i == 0:
                ax.set_title(f"t = {t:.2f}", fontsize=10)
        name = "NLL" if task == "mle" else "KL"
        axes[i, 0].set_ylabel(f"{row['data']}\n{name} {row[metric]:.2f}", fontsize=10)
    fig.suptitle(
        f"{chosen[0]['model']}: N(0, I) samples (t = {t1:g}) carried to the data (t = 0), "
        f"on [-{lim:g}, {lim:g}]²\ncolour: angle at t = {t1:g}; row labels: target and the "
        f"model's {'test NLL' if task == 'mle' else 'KL(q||p)'} (nats)",
        fontsize=10,
    )
    report.save_figure(fig, path)
    return True


def draw_figures(rows: list[dict], out: Path) -> list[str]:
    """The grid and transport figures of the seed-0 runs in ``rows``; the names written."""
    rows = [r for r in rows if r["seed"] == 0]
    grids = {"density": ("density_matching.png", DENSITY_GRID, POTENTIAL_NAMES)}
    grids["mle"] = ("mle.png", MLE_GRID, MLE_DATA)
    drawn = []
    for task, (name, grid, datas) in grids.items():
        if plot_grid(out / name, rows, task, [n for n, _ in grid], list(datas)):
            drawn.append(name)
        if plot_transports(out / f"transport_{task}.png", rows, task, TRANSPORT_RUNS[task]):
            drawn.append(f"transport_{task}.png")
    return drawn


def finished_runs(root) -> list[dict]:
    """:func:`collect`, with one-line errors for a missing folder or no finished runs."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"no folder {root}: run the grids first (python -m experiments.cnf grid density "
            f"--root {root}) or give --root"
        )
    rows = collect(root)
    if not rows:
        raise UserError(f"no finished runs (metrics.json) under {root}/<task>/<data>/<run>")
    return rows


def write_table(root, out) -> str:
    """Collect finished runs under ``root`` into ``out``: metrics, tables, figures."""
    rows, out = finished_runs(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "metrics.json", rows)
    report.write_csv(out / "metrics.csv", rows)
    table = markdown_tables(rows)
    (out / "table.md").write_text(table)
    draw_figures(rows, out)
    configs = {r["path"]: json.loads((Path(r["path"]) / "config.json").read_text()) for r in rows}
    report.write_json(out / "configs.json", configs)
    return table


def write_figures(root, out) -> list[str]:
    """Only the figures (tables untouched), from the runs under ``root`` that exist."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return draw_figures(finished_runs(root), out)
