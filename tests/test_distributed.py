"""Multi-process data parallelism on JAX's multi-controller runtime (CPU, gloo collectives).

Every run here is a fresh subprocess started by ``experiments.launch`` (the pytest process has
float64 and strict promotion on; the experiments run in float32 under JAX's defaults), so the
one-process reference and the two-process run differ only in how the global batch is split.
"""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

from configs.spiral import SMOKE, SpiralConfig
from experiments import launch, spiral
from experiments.common.cli import UserError
from experiments.common.loop import optimizer_for
from ode_jax.nn import MLPField

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds per launch: generous for a loaded CI machine; a hang fails, not blocks
# The spiral smoke run cut to 3 steps, evaluated and checkpointed at the end.
SPIRAL_FLAGS = ["--smoke", "--steps", "3", "--log-every", "1", "--eval-every", "3"]
SPIRAL_FLAGS += ["--checkpoint-every", "3", "--no-progress"]


RESUME = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from experiments.common import train
    from tests.test_harness import ToyConfig, toy_task

    out, task = sys.argv[1], toy_task()
    full = train(ToyConfig(out=f"{out}/full", lr=1e-2, steps=5), task)
    cfg = ToyConfig(out=f"{out}/killed", lr=1e-2, steps=5)
    assert train(cfg, task, stop_after=4) is None  # killed after step 4: checkpoint at 3
    resumed = train(cfg, task)
    assert jax.process_count() == 2 and len(jax.devices()) == 2
    for a, b in zip(jax.tree.leaves(full.model), jax.tree.leaves(resumed.model)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    def records(result):  # what the run logged, less the timings
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]
        return {"history": rows, "evals": result.evals}

    assert records(full) == records(resumed)
    print("RECORDS", json.dumps(records(resumed)))
    """
)


def _launch_command(n: int, *command) -> list[str]:
    argv = [sys.executable, "-m", "experiments.launch", "-n", str(n), "--timeout", str(TIMEOUT)]
    return [*argv, "--", *map(str, command)]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Start every multi-process run of this module at once (they are mostly single-threaded
    compilation, so they overlap well on 2 cores); ``launched(name)`` waits for one and
    returns ``(folder, stdout)``, failing with its output if it failed."""
    root = tmp_path_factory.mktemp("distributed")
    spiral = [sys.executable, "-m", "experiments.spiral", *SPIRAL_FLAGS, "--out"]
    commands = {
        "spiral_1proc": (1, *spiral, root / "spiral_1proc"),
        "spiral_2proc": (2, *spiral, root / "spiral_2proc"),
        "resume_2proc": (2, sys.executable, "-c", RESUME, root / "resume_2proc"),
    }
    procs = {
        name: subprocess.Popen(
            _launch_command(*command),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, command in commands.items()
    }
    done = {}

    def wait(name):
        if name not in done:
            try:
                out, err = procs[name].communicate(timeout=TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                procs[name].terminate()  # the launcher stops its processes
                out, err = procs[name].communicate()
            done[name] = (procs[name].returncode, out, err)
        status, out, err = done[name]
        n = commands[name][0]
        assert status == 0, f"{name}: {n}-process run failed ({status}):\n{out[-4000:]}{err}"
        return root / name, out

    yield wait
    for proc in procs.values():  # a test that failed early leaves none behind
        if proc.poll() is None:
            proc.terminate()
            proc.communicate()


def _final_state(out: Path, cfg: SpiralConfig):
    """The (model, optimiser state) of the final checkpoint in ``out``, as numpy arrays."""
    features = spiral.cube if cfg.features == "cube" else None
    model = MLPField(
        2, cfg.width, cfg.depth, features=features, dtype=np.float32, key=jax.random.key(0)
    )
    opt_state = optimizer_for(cfg).init(eqx.filter(model, eqx.is_inexact_array))
    meta = json.loads((out / "checkpoint/checkpoint.json").read_text())
    state = eqx.tree_deserialise_leaves(out / "checkpoint" / meta["state_file"], (model, opt_state))
    return meta, [np.asarray(x) for x in jax.tree.leaves(eqx.filter(state, eqx.is_array))]


@pytest.mark.slow  # two JAX processes training (~50 s on 2 cores)
def test_two_processes_equal_one_process(launched):
    """The documented command (docs/scaling.md): 2 processes, each holding half of the global
    batch, end with the parameters, losses and evaluations of 1 process."""
    runs = {}
    for n in (1, 2):
        out, stdout = launched(f"spiral_{n}proc")
        runs[n] = out
        lines = stdout.splitlines()
        # Process 0 alone writes; every process trains.
        assert sum(line.startswith("[0] wrote ") for line in lines) == 1, stdout[-2000:]
        assert not any(line.startswith("[1] wrote ") for line in lines)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["num_processes"] == n
    cfg = SpiralConfig(smoke=True, **dict(SMOKE, steps=3))
    (meta1, state1), (meta2, state2) = (_final_state(runs[n], cfg) for n in (1, 2))
    assert meta1["step"] == meta2["step"] == 3
    assert len(state1) == len(state2) > 0
    for a, b in zip(state1, state2):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("history", "evals"):
        assert [r["step"] for r in meta1[key]] == [r["step"] for r in meta2[key]]
        for r1, r2 in zip(meta1[key], meta2[key]):
            for k in r1.keys() - {"step", "seconds"}:
                np.testing.assert_allclose(r1[k], r2[k], rtol=1e-5, err_msg=f"{key} {k}")
    # The output folder holds nothing but one run's files (no second writer's leftovers).
    assert not [p for p in runs[2].rglob(".*tmp*")]


@pytest.mark.slow  # two JAX processes training (~50 s on 2 cores)
def test_resume_two_processes(launched):
    """A 2-process run killed mid-way resumes (process 0 reads the checkpoint and broadcasts it)
    to the parameters and records of an uninterrupted one, the same on both processes."""
    folder, stdout = launched("resume_2proc")
    records = {
        line.split(" ", 1)[0]: line.split("RECORDS ", 1)[1]
        for line in stdout.splitlines()
        if "RECORDS " in line
    }
    assert set(records) == {"[0]", "[1]"}, stdout[-2000:]
    assert json.loads(records["[0]"]) == json.loads(records["[1]"])
    assert sorted(p.name for p in (folder / "killed/checkpoint").iterdir()) == [
        "checkpoint.json",
        "state_00000005.eqx",
    ]


def test_launcher_stops_the_others_when_one_fails(capfd):
    """One process failing ends the launch promptly with its status; the other is stopped."""
    fail_one = (
        "import os, sys, time\n"
        "sys.exit(3) if os.environ['JAX_PROCESS_ID'] == '1' else time.sleep(120)"
    )
    t0 = time.monotonic()
    status = launch.launch([sys.executable, "-c", fail_one], 2, timeout=60)
    assert status == 3
    assert time.monotonic() - t0 < 30
    assert "process 1 exited with status 3" in capfd.readouterr().err
    assert launch.launch([sys.executable, "-c", "import time; time.sleep(30)"], 1, timeout=1) == 124


def test_launcher_environment():
    env = launch.process_env(1, 2, "127.0.0.1:1234", cpu_devices=2, base={})
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_NUM_CPU_DEVICES"]) == (
        "2",
        "1",
        "2",
    )
    with pytest.raises(UserError, match="command after --"):
        launch.main(["-n", "2"])  # no command
    with pytest.raises(UserError, match="--num-processes must be >= 1"):
        launch.main(["-n", "0", "--", "true"])
    args = launch.parse_args(["-n", "3", "--timeout", "5", "--", "python", "-m", "x", "--out", "y"])
    assert (args.num_processes, args.timeout) == (3, 5.0)
    assert args.command == ("python", "-m", "x", "--out", "y")  # its flags are not read here


def test_incomplete_multi_process_settings_fail_clearly(monkeypatch):
    from experiments.common import distributed

    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    monkeypatch.delenv(distributed.ENV_COORDINATOR, raising=False)
    monkeypatch.delenv(distributed.ENV_PROCESS_ID, raising=False)
    with pytest.raises(ValueError, match="coordinator address"):
        distributed.settings(SpiralConfig())
    assert distributed.settings(SpiralConfig(num_processes=1)) is None
    cfg = SpiralConfig(coordinator="h:1", num_processes=4, process_id=3)
    assert distributed.settings(cfg) == ("h:1", 4, 3)
    with pytest.raises(ValueError, match="process_id"):
        SpiralConfig(num_processes=2, process_id=2)


HLO = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]) parameter(0)
  %ar = f32[] all-reduce(f32[] %x), channel_id=1, to_apply=%add
  %inner = (s32[]) while((s32[]) %t), condition=%cond, body=%inner_body
  ROOT %t = (s32[], f32[4]) tuple(%i, %y)
}

%inner_body (q: (s32[])) -> (s32[]) {
  %ag = f32[8]{0} all-gather(f32[4]{0} %y), channel_id=2, dimensions={0}
  %cp = f32[4]{0} collective-permute(f32[4]{0} %y), channel_id=3, source_target_pairs={{0,1}}
  ROOT %q = (s32[]) tuple(%i)
}

%cond (c: (s32[], f32[4])) -> pred[] {
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %g = (f32[], f32[]) all-reduce(f32[] %a, f32[] %b), channel_id=4, to_apply=%add
  %w = (s32[], f32[4]) while((s32[], f32[4]) %init), condition=%cond, body=%body
  ROOT %r = f32[4]{0} get-tuple-element(%w), index=1
}
"""


def test_comm_count_attributes_collectives_to_loops():
    """benchmarks/comm_count.py (the numbers in docs/scaling.md) on a hand-written module: ops
    go to the innermost loop that runs them, a reduction's own computation counts nothing."""
    from benchmarks.comm_count import collectives

    places = collectives(HLO)
    assert places["outside loops"]["ops"] == [("all-reduce", "(f32[], f32[])")]
    assert places["while w"] == {"parent": "outside loops", "ops": [("all-reduce", "f32[]")]}
    assert places["while inner"]["parent"] == "while w"
    assert sorted(k for k, _ in places["while inner"]["ops"]) == [
        "all-gather",
        "collective-permute",
    ]
