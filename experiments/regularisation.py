"""Regularisers that cut NFE (issue 21): one short protocol per task, every arm alike.

Runs the existing experiments with ``--reg`` / ``--reg-weight`` flags (a grid of arms per
task), then collects each run's test metric, forward NFE at test and in training, backward NFE
in training and training wall time into ``metrics.json`` (one row per run), a markdown table and
a figure of the metric against the test NFE.

    python -m experiments.regularisation run --root runs/regularisation [--tasks odenet,cnf]
    python -m experiments.regularisation table --root runs/regularisation \\
        --out results/regularisation
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from experiments.common import cli, grid, report

# The short protocols (applied to every arm of a task alike) and the arms: (reg, weight, extra).
PROTOCOLS = {
    "odenet": [
        "--width", "16", "--batch-size", "64", "--steps", "860", "--lr-schedule", "cosine",
        "--val-size", "5000", "--eval-every", "430", "--checkpoint-every", "215",
        "--log-every", "20", "--no-measure-step",
    ],
    # The same, 3 epochs: longer training, where the unregularised NFE has room to grow.
    "odenet_3ep": [
        "--width", "16", "--batch-size", "64", "--steps", "2580", "--lr-schedule", "cosine",
        "--val-size", "5000", "--eval-every", "430", "--checkpoint-every", "215",
        "--log-every", "20", "--no-measure-step",
    ],
    "cnf": [
        "--task", "mle", "--data", "8gaussians", "--model", "cnf_planar", "--width", "64",
        "--steps", "3000", "--eval-every", "3000", "--checkpoint-every", "500",
    ],
    "spiral": ["--steps", "4000", "--eval-every", "1000", "--checkpoint-every", "1000"],
}  # fmt: skip
# Ends each run's folder name: a changed protocol gets new folders, so `run` never skips or
# resumes a run of an earlier one (the ODE-Net's 250-step runs of PROVENANCE.md).
# The CNF's 1000-step runs without a validation sample (PROVENANCE.md) are not collected.
PROTOCOL_TAGS = {"odenet": "_1epoch", "odenet_3ep": "_3epoch", "cnf": "_3k", "spiral": ""}
# The experiment each task runs.
EXPERIMENT = {"odenet": "odenet", "odenet_3ep": "odenet", "cnf": "cnf", "spiral": "spiral"}
ARMS = {
    "odenet": [
        ("none", 0.0, []),
        ("kinetic", 0.01, []),
        ("kinetic", 0.1, []),
        ("kinetic", 1.0, []),
        ("jacobian", 0.03, []),
        ("jacobian", 0.1, []),
        ("jacobian", 0.3, []),
        ("rnode", 0.01, []),
        ("rnode", 0.03, []),
        ("taynode", 0.003, []),
        ("taynode", 0.03, []),
        ("steer", 0.0, []),
        ("error", 10.0, ["--model", "rknet"]),
        ("error", 100.0, ["--model", "rknet"]),
        ("none", 0.0, ["--model", "rknet"]),
    ],
    # Chosen on the 1-epoch arms' validation error and NFE: the two best trade-offs and a
    # stronger RNODE weight (the taynode arms, 2-3x slower to train, are left out).
    "odenet_3ep": [
        ("none", 0.0, []),
        ("jacobian", 0.03, []),
        ("rnode", 0.03, []),
        ("rnode", 0.1, []),
    ],
    "cnf": [
        ("none", 0.0, []),
        ("kinetic", 0.01, []),
        ("kinetic", 0.1, []),
        ("kinetic", 1.0, []),
        ("jacobian", 0.1, []),
        ("jacobian", 0.3, []),
        ("jacobian", 1.0, []),
        ("rnode", 0.01, []),
        ("rnode", 0.1, []),
        ("rnode", 1.0, []),
        ("taynode", 0.1, []),
        ("taynode", 0.3, []),
        ("taynode", 1.0, []),
        ("steer", 0.0, []),
        ("error", 1e3, ["--adjoint", "discrete"]),
        ("error", 2e3, ["--adjoint", "discrete"]),
        ("error", 3e3, ["--adjoint", "discrete"]),
        ("error", 5e3, ["--adjoint", "discrete"]),
        ("error", 1e4, ["--adjoint", "discrete"]),
        ("none", 0.0, ["--adjoint", "discrete"]),
    ],
    "spiral": [
        ("none", 0.0, []),
        ("kinetic", 0.01, []),
        ("kinetic", 0.1, []),
        ("jacobian", 0.01, []),
        ("jacobian", 0.1, []),
        ("taynode", 0.01, []),
        ("taynode", 0.1, []),
        ("steer", 0.0, []),
        ("error", 1e5, ["--adjoint", "discrete"]),
        ("error", 1e6, ["--adjoint", "discrete"]),
        ("none", 0.0, ["--adjoint", "discrete"]),
    ],
}
YLABELS = {
    "odenet": "test error (%)",
    "odenet_3ep": "test error (%)",
    "cnf": "test NLL (nats)",
    "spiral": "MAE over t in [0, 25] (state units)",
}
METRIC = {"odenet": "test_error", "odenet_3ep": "test_error", "cnf": "test_nll", "spiral": "mae"}
LABELS = {
    "odenet": "ODE-Net, Fashion-MNIST, 1 epoch (test error, %)",
    "odenet_3ep": "ODE-Net, Fashion-MNIST, 3 epochs (test error, %)",
    "cnf": "CNF, 8gaussians (test NLL, nats)",
    "spiral": "spiral (MAE over the horizon)",
}


def run_name(reg: str, weight: float, extra: list) -> str:
    name = reg if reg in ("none", "steer") else f"{reg}_{weight:g}"
    if "rknet" in extra or "discrete" in extra:
        name += "_discrete"
    return name


def _main_of(task: str):
    from experiments import cnf, odenet, spiral

    return {"odenet": odenet.main, "cnf": cnf.main, "spiral": spiral.main}[EXPERIMENT[task]]


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """``run``: every arm of the chosen tasks that has no metrics.json yet (resumable)."""

    root: str = "runs/regularisation"  # runs go to ROOT/<task>/<arm>_s<seed><protocol tag>
    tasks: str = "odenet,cnf,spiral"  # comma-separated subset of odenet, odenet_3ep, cnf, spiral
    seed: int = 0  # seed of every run
    smoke: bool = False  # each experiment's --smoke sizes instead of the short protocol
    runs: str = ""  # comma-separated subset of the arm names; empty: all


def run(args: RunArgs) -> list:
    """Run every arm of the chosen tasks that has no ``metrics.json`` yet (resumable)."""
    tasks = grid.subset(args.tasks, list(ARMS), "--tasks")
    names = sorted({run_name(*arm) for task in tasks for arm in ARMS[task]})
    chosen = grid.subset(args.runs, names, "--runs")
    done = []
    for task in tasks:
        points, root, tag = [], Path(args.root), PROTOCOL_TAGS[task]
        for reg, weight, extra in ARMS[task]:
            if run_name(reg, weight, extra) not in chosen:
                continue
            flags = ["--smoke"] if args.smoke else list(PROTOCOLS[task])
            flags += ["--reg", reg, "--reg-weight", str(weight), *extra]
            flags += ["--seed", str(args.seed), "--no-progress"]
            points.append(
                (root / task / f"{run_name(reg, weight, extra)}_s{args.seed}{tag}", flags)
            )
        done += grid.run_grid(points, _main_of(task))
    return done


def collect(root: Path) -> list[dict]:
    """One row per finished run under ``root/<task>/<run>``."""
    rows = []
    for path in sorted(root.glob("*/*/metrics.json")):
        task = path.parent.parent.name
        if task not in PROTOCOL_TAGS or not path.parent.name.endswith(PROTOCOL_TAGS[task]):
            continue  # a run of an earlier protocol
        m = json.loads(path.read_text())
        cfg = json.loads((path.parent / "config.json").read_text())
        final = m.get("final_eval", {})
        # The ODE-Net's validation error and forward NFE at the checkpoint the run selected on
        # them, the CNF's validation NLL at the end: any choice between arms is made on these.
        val, nfe_val = None, None
        if EXPERIMENT[task] == "odenet":
            metric, nfe_test = m["test_error"], m["test_nfe_fwd"]
            val, nfe_val = m["val_error"], _val_nfe(path.parent, m["selected_step"])
        elif EXPERIMENT[task] == "cnf":
            name = "nll" if "test_nll" in final else "loss"  # --smoke runs the density task
            metric, nfe_test = final[f"test_{name}"], final["nfe"]
            val, nfe_val = final.get(f"val_{name}"), final.get("val_nfe")
        else:
            metric, nfe_test = final["mae"], final["nfe"]
        adjoint = "discrete" if cfg.get("model") == "rknet" else cfg.get("adjoint", "continuous")
        rows.append(
            dict(
                task=task,
                reg=cfg["reg"],
                weight=cfg["reg_weight"] if cfg["reg"] not in ("none", "steer") else 0.0,
                seed=cfg["seed"],
                metric_name=METRIC[task],
                metric=metric,
                nfe_fwd_test=nfe_test,
                nfe_fwd_train=_last(path.parent, "nfe_fwd"),
                nfe_bwd_train=_last(path.parent, "nfe_bwd"),
                train_seconds=m["train_seconds"],
                val_metric=val,
                nfe_fwd_val=nfe_val,
                adjoint=adjoint,
                steps=m["steps"],
                run=str(path.parent),
            )
        )
    return rows


def _last(run: Path, key: str) -> float:
    """Mean of ``key`` over the last tenth of the training curve (the end of training)."""
    hist = report.read_csv(run / "history.csv")
    tail = hist[-max(1, len(hist) // 10) :]
    return float(sum(r[key] for r in tail) / len(tail))


def _val_nfe(run: Path, step: int) -> float:
    """Mean forward NFE of the validation solves at ``step`` (from the run's evals.csv)."""
    return next(r["val_nfe"] for r in report.read_csv(run / "evals.csv") if r["step"] == step)


REGS = ("none", "kinetic", "jacobian", "rnode", "taynode", "steer", "error")


def _order(row: dict) -> tuple:
    return (row["adjoint"] != "continuous", REGS.index(row["reg"]), row["weight"], row["seed"])


COLUMNS = [
    ("reg", "reg", str),
    ("weight", "weight", report.number("{:g}")),
    ("adjoint", "adjoint", str),
    ("seed", "seed", report.number("{:g}")),
    ("val_metric", "val", report.number("{:.3f}")),
    ("delta_val", "val Δ vs none", str),
    ("nfe_fwd_val", "NFE fwd val", report.number("{:.1f}")),
    ("metric", "metric", report.number("{:.3f}")),
    ("delta", "Δ vs none", str),
    ("nfe_fwd_test", "NFE fwd test", report.number("{:.1f}")),
    ("ratio", "× none", str),
    ("nfe_train", "NFE fwd / bwd train", str),
    ("train_seconds", "train s", report.number("{:.0f}")),
]


def markdown(rows: list[dict]) -> str:
    tables = []
    for task in ARMS:
        sub = sorted((r for r in rows if r["task"] == task), key=_order)
        if not sub:
            continue
        base = {(r["adjoint"], r["seed"]): r for r in sub if r["reg"] == "none"}
        scale = 100.0 if EXPERIMENT[task] == "odenet" else 1.0  # the ODE-Net's error in %
        lines = []
        # The validation columns only where the task has a validation set.
        has_val = sub[0]["val_metric"] is not None
        val_keys = ("val_metric", "delta_val", "nfe_fwd_val")
        columns = [c for c in COLUMNS if has_val or c[0] not in val_keys]
        for r in sub:
            # Against the unregularised run with the same adjoint and seed; † where there is
            # none (then against the continuous-adjoint one).
            b, mark = base.get((r["adjoint"], r["seed"])), ""
            if b is None:
                b, mark = base.get(("continuous", r["seed"])), " †"
            delta = "–" if b is None else f"{scale * (r['metric'] - b['metric']):+.3f}{mark}"
            ratio = "–" if b is None else f"{r['nfe_fwd_test'] / b['nfe_fwd_test']:.2f}{mark}"
            train = f"{r['nfe_fwd_train']:.1f} / {r['nfe_bwd_train']:.1f}"
            val = None if r["val_metric"] is None else scale * r["val_metric"]
            scaled = dict(metric=scale * r["metric"], val_metric=val)
            dval = "–"
            if b is not None and val is not None and b["val_metric"] is not None:
                dval = f"{val - scale * b['val_metric']:+.3f}{mark}"
            extra = dict(delta=delta, delta_val=dval, ratio=ratio, nfe_train=train)
            lines.append(dict(r, **scaled, **extra))
        tables.append(f"**{LABELS[task]}**\n\n{report.markdown_table(lines, columns)}\n\n")
    return "".join(tables)


def plot(path, rows: list[dict]):
    """Metric against test-time forward NFE, one point per run, one panel per task."""
    tasks = [t for t in ARMS if any(r["task"] == t for r in rows)]
    width = 4.6 * len(tasks) + 1.6
    fig, axes = report.plt.subplots(1, len(tasks), figsize=(width, 4.2), squeeze=False)
    regs = REGS
    markers = dict(continuous="o", discrete="s")
    for ax, task in zip(axes[0], tasks):
        scale = 100.0 if EXPERIMENT[task] == "odenet" else 1.0
        for r in (r for r in rows if r["task"] == task):
            c = f"C{regs.index(r['reg'])}"
            ax.scatter(
                r["nfe_fwd_test"], scale * r["metric"], c=c, marker=markers[r["adjoint"]], s=40
            )
            tag = "" if r["reg"] in ("none", "steer") else f"{r['weight']:g}"
            ax.annotate(tag, (r["nfe_fwd_test"], scale * r["metric"]), fontsize=7)
        ax.set(xlabel="forward NFE per test solve (evaluations of f)", ylabel=YLABELS[task])
        ax.set_title(LABELS[task].split(" (")[0], fontsize=10)
    handles = [
        report.plt.Line2D([], [], color=f"C{i}", marker="o", ls="", label=g)
        for i, g in enumerate(regs)
    ] + [
        report.plt.Line2D([], [], color="gray", marker=m, ls="", label=f"{a} adjoint")
        for a, m in markers.items()
    ]
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / width, 1))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)  # not report.save_figure: its tight_layout would cover the legend
    report.plt.close(fig)


def write_table(root, out) -> str:
    root = grid.require_folder(
        root, "run the arms first (python -m experiments.regularisation run)"
    )
    rows, out = collect(root), Path(out)
    if not rows:
        raise cli.UserError(f"no finished runs under {root}/<task>/<run>/metrics.json")
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "metrics.json", rows)
    table = markdown(rows)
    (out / "table.md").write_text(table)
    plot(out / "metric_vs_nfe.png", rows)
    return table


@dataclasses.dataclass(frozen=True)
class TableArgs:
    root: str = "runs/regularisation"  # the arms' runs (ROOT/<task>/<arm>_s<seed>)
    out: str = "results/regularisation"  # folder for metrics.json, table.md, metric_vs_nfe.png


def _table(args: TableArgs) -> str:
    table = write_table(args.root, args.out)
    print(table)
    return table


def main(argv=None):
    return cli.dispatch(
        "regularisation",
        argv,
        None,
        {
            "run": cli.Subcommand(RunArgs, run, "run the arms of the chosen tasks"),
            "table": cli.Subcommand(TableArgs, _table, "table and figure of finished runs"),
        },
    )


if __name__ == "__main__":
    cli.entry(main)
