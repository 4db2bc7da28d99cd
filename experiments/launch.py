"""Launch one command as N local processes of a multi-process JAX run.

    python -m experiments.launch --num-processes 2 -- \\
        python -m experiments.spiral --smoke --out runs/spiral_2proc

Each process gets the environment of JAX's multi-controller runtime (``JAX_COORDINATOR_ADDRESS``
on a free local port, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), which the experiment harness
reads (``experiments/common/distributed.py``); with ``--cpu-devices-per-process K`` each has K
CPU devices. Output is streamed line by line, prefixed ``[i]``. When a process fails (or the
``--timeout`` passes) the others are stopped and the launcher exits with the failing status.
On several hosts, run the command once per host with those variables set by hand or by the
cluster's launcher (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Annotated

import tyro

from experiments.common.cli import UserError, entry

TIMEOUT_STATUS = 124  # as coreutils `timeout`


def free_port() -> int:
    """A TCP port free on this machine now (the coordinator binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(i: int, n: int, address: str, cpu_devices: int = 0, base=None) -> dict:
    """The environment of process ``i`` of ``n`` joining the coordinator at ``address``."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
    if cpu_devices:
        env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
    env.setdefault("PYTHONUNBUFFERED", "1")  # interleave the streams as they happen
    return env


def _stream(i: int, proc: subprocess.Popen, lock: threading.Lock):
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{i}] {line}")
            sys.stdout.flush()


def _stop(procs: Sequence[subprocess.Popen], grace: float = 5.0):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    command: Sequence[str], num_processes: int, *, cpu_devices: int = 0, timeout: float = 0
) -> int:
    """Run ``command`` as ``num_processes`` processes; return 0 when all succeed, else the
    first failure's exit status (``TIMEOUT_STATUS`` after ``timeout`` seconds, if > 0)."""
    address = f"127.0.0.1:{free_port()}"
    lock = threading.Lock()
    procs, threads = [], []
    for i in range(num_processes):
        env = process_env(i, num_processes, address, cpu_devices)
        proc = subprocess.Popen(
            list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        procs.append(proc)
        threads.append(threading.Thread(target=_stream, args=(i, proc, lock), daemon=True))
        threads[-1].start()
    start, status = time.monotonic(), 0
    try:
        while [p.poll() for p in procs].count(None):  # poll every one: sets returncode
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode]
            if failed:
                i, status = failed[0]
                _report(f"process {i} exited with status {status}; stopping the others")
                break
            if timeout and time.monotonic() - start > timeout:
                _report(f"timed out after {timeout:g} s; stopping all processes")
                status = TIMEOUT_STATUS
                break
            time.sleep(0.05)
    finally:  # also on Ctrl-C
        _stop(procs)
        for t in threads:
            t.join(timeout=5)
        for p in procs:  # the output pipes, read to the end by the threads
            p.stdout.close()
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode), 0)
        if status:
            _report(f"a process exited with status {status}")
    return status if status >= 0 else 128 - status  # killed by signal k: 128 + k


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def _report(message: str):
    print(f"[launch] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Args:
    """Run COMMAND as N local processes of one multi-process JAX run: the flags first, then
    ``-- COMMAND...`` (e.g. ``-n 2 -- python -m experiments.spiral --smoke``)."""

    num_processes: Annotated[int, tyro.conf.arg(aliases=("-n",))] = 2  # processes
    cpu_devices_per_process: int = 0  # CPU devices each (0: JAX's own)
    timeout: float = 0  # seconds, 0: none
    # the command each process runs, after -- (so that its own flags are not read here)
    command: tyro.conf.Positional[
        Annotated[tuple[str, ...], tyro.conf.arg(metavar="COMMAND...")]
    ] = ()

    def __post_init__(self):
        if not self.command:
            raise UserError("give the command after --, e.g. -- python -m experiments.spiral")
        if self.num_processes < 1:
            raise UserError(f"--num-processes must be >= 1, got {self.num_processes}")
        if self.cpu_devices_per_process < 0 or self.timeout < 0:
            raise UserError("--cpu-devices-per-process and --timeout must be >= 0")


def parse_args(argv: Sequence[str] | None = None) -> Args:
    return tyro.cli(Args, args=argv, prog="python -m experiments.launch")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)  # a terminated launcher stops its processes too
    return launch(
        args.command,
        args.num_processes,
        cpu_devices=args.cpu_devices_per_process,
        timeout=args.timeout,
    )


if __name__ == "__main__":
    entry(lambda: sys.exit(main()))
