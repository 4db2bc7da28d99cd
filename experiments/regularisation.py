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

import argparse
import json
import sys
from pathlib import Path

from experiments.common import report

# The short protocols (applied to every arm of a task alike) and the arms: (reg, weight, extra).
PROTOCOLS = {
    "odenet": [
        "--width", "16", "--batch-size", "64", "--steps", "250", "--lr-schedule", "cosine",
        "--val-size", "1000", "--eval-every", "250", "--checkpoint-every", "50",
        "--log-every", "10", "--no-measure-step",
    ],
    "cnf": [
        "--task", "mle", "--data", "8gaussians", "--model", "cnf_planar", "--width", "64",
        "--steps", "1000", "--eval-every", "1000", "--checkpoint-every", "250",
    ],
    "spiral": ["--steps", "4000", "--eval-every", "1000", "--checkpoint-every", "1000"],
}  # fmt: skip
ARMS = {
    "odenet": [
        ("none", 0.0, []),
        ("kinetic", 0.01, []),
        ("kinetic", 0.1, []),
        ("jacobian", 0.03, []),
        ("taynode", 0.003, []),
        ("taynode", 0.03, []),
        ("steer", 0.0, []),
        ("error", 100.0, ["--model", "rknet"]),
        ("none", 0.0, ["--model", "rknet"]),
    ],
    "cnf": [
        ("none", 0.0, []),
        ("kinetic", 0.01, []),
        ("kinetic", 0.1, []),
        ("kinetic", 1.0, []),
        ("jacobian", 0.01, []),
        ("jacobian", 0.1, []),
        ("jacobian", 1.0, []),
        ("taynode", 0.01, []),
        ("taynode", 0.1, []),
        ("taynode", 1.0, []),
        ("steer", 0.0, []),
        ("error", 1e4, ["--adjoint", "discrete"]),
        ("error", 1e5, ["--adjoint", "discrete"]),
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
    "cnf": "test NLL (nats)",
    "spiral": "MAE over t in [0, 25] (state units)",
}
METRIC = {"odenet": "test_error", "cnf": "test_nll", "spiral": "mae"}
LABELS = {
    "odenet": "ODE-Net, Fashion-MNIST (test error, %)",
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

    return {"odenet": odenet.main, "cnf": cnf.main, "spiral": spiral.main}[task]


def run(argv) -> list:
    """Run every arm of the chosen tasks that has no ``metrics.json`` yet (resumable)."""
    parser = argparse.ArgumentParser(prog="experiments.regularisation run")
    parser.add_argument("--root", default="runs/regularisation")
    parser.add_argument("--tasks", default="odenet,cnf,spiral")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="each experiment's --smoke sizes")
    parser.add_argument("--runs", default="", help="comma-separated subset of the run names")
    args = parser.parse_args(argv)
    chosen = set(args.runs.split(",")) if args.runs else None
    done = []
    for task in args.tasks.split(","):
        if task not in ARMS:
            raise SystemExit(f"error: unknown task {task!r}; tasks: {list(ARMS)}")
        for reg, weight, extra in ARMS[task]:
            if chosen is not None and run_name(reg, weight, extra) not in chosen:
                continue
            out = Path(args.root) / task / f"{run_name(reg, weight, extra)}_s{args.seed}"
            if (out / "metrics.json").exists():
                print(f"skip {out} (metrics.json exists)", flush=True)
                continue
            flags = ["--smoke"] if args.smoke else list(PROTOCOLS[task])
            flags += ["--reg", reg, "--reg-weight", str(weight), *extra]
            flags += ["--seed", str(args.seed), "--out", str(out), "--no-progress"]
            print(f"run {task}: {' '.join(flags)}", flush=True)
            _main_of(task)(flags)
            done.append(str(out))
    return done


def collect(root: Path) -> list[dict]:
    """One row per finished run under ``root/<task>/<run>``."""
    rows = []
    for path in sorted(root.glob("*/*/metrics.json")):
        task, m = path.parent.parent.name, json.loads(path.read_text())
        cfg = json.loads((path.parent / "config.json").read_text())
        final = m.get("final_eval", {})
        if task == "odenet":
            metric, nfe_test = m["test_error"], m["test_nfe_fwd"]
        elif task == "cnf":
            metric, nfe_test = final["test_nll"], final["nfe"]
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


REGS = ("none", "kinetic", "jacobian", "taynode", "steer", "error")


def _order(row: dict) -> tuple:
    return (row["adjoint"] != "continuous", REGS.index(row["reg"]), row["weight"], row["seed"])


def markdown(rows: list[dict]) -> str:
    lines = []
    for task in ARMS:
        sub = sorted((r for r in rows if r["task"] == task), key=_order)
        if not sub:
            continue
        base = {(r["adjoint"], r["seed"]): r for r in sub if r["reg"] == "none"}
        lines += [
            f"**{LABELS[task]}**\n\n",
            "| reg | weight | adjoint | seed | metric | Δ vs none | NFE fwd test | × none | "
            "NFE fwd / bwd train | train s |\n",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        ]
        for r in sub:
            # Against the unregularised run with the same adjoint and seed; † where there is
            # none (then against the continuous-adjoint one).
            b, mark = base.get((r["adjoint"], r["seed"])), ""
            if b is None:
                b, mark = base.get(("continuous", r["seed"])), " †"
            scale = 100.0 if task == "odenet" else 1.0
            delta = "–" if b is None else f"{scale * (r['metric'] - b['metric']):+.3f}{mark}"
            ratio = "–" if b is None else f"{r['nfe_fwd_test'] / b['nfe_fwd_test']:.2f}{mark}"
            lines.append(
                f"| {r['reg']} | {r['weight']:g} | {r['adjoint']} | {r['seed']} | "
                f"{scale * r['metric']:.3f} | "
                f"{delta} | {r['nfe_fwd_test']:.1f} | {ratio} | "
                f"{r['nfe_fwd_train']:.1f} / {r['nfe_bwd_train']:.1f} | "
                f"{r['train_seconds']:.0f} |\n"
            )
        lines.append("\n")
    return "".join(lines)


def plot(path, rows: list[dict]):
    """Metric against test-time forward NFE, one point per run, one panel per task."""
    tasks = [t for t in ARMS if any(r["task"] == t for r in rows)]
    width = 4.6 * len(tasks) + 1.6
    fig, axes = report.plt.subplots(1, len(tasks), figsize=(width, 4.2), squeeze=False)
    regs = REGS
    markers = dict(continuous="o", discrete="s")
    for ax, task in zip(axes[0], tasks):
        scale = 100.0 if task == "odenet" else 1.0
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
    root, out = Path(root), Path(out)
    rows = collect(root)
    if not rows:
        raise SystemExit(f"error: no finished runs under {root}/<task>/<run>/metrics.json")
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "metrics.json", rows)
    table = markdown(rows)
    (out / "table.md").write_text(table)
    plot(out / "metric_vs_nfe.png", rows)
    return table


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        return run(argv[1:])
    if argv[:1] == ["table"]:
        parser = argparse.ArgumentParser(prog="experiments.regularisation table")
        parser.add_argument("--root", default="runs/regularisation")
        parser.add_argument("--out", default="results/regularisation")
        args = parser.parse_args(argv[1:])
        table = write_table(args.root, args.out)
        print(table)
        return table
    raise SystemExit("usage: python -m experiments.regularisation {run,table} ...")


if __name__ == "__main__":
    main()
