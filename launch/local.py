r"""Local multi-process launcher: N processes x M CPU devices joined with jax.distributed on 127.0.0.1.

    python -m launch.local --num_processes=2 --devices_per_process=4 -- \
        -m ib_jax.train --config=configs/tiny.py --workdir=workdirs/tiny2

Every process runs the same command (the arguments after `--`, given to this Python interpreter)
with `IB_JAX_COORDINATOR`, `IB_JAX_NUM_PROCESSES`, `IB_JAX_PROCESS_ID` (read by
ib_jax/distributed.py) and `JAX_NUM_CPU_DEVICES`. This is how multi-host code paths (per-process
data shards, global arrays from process-local batches, Orbax saves from several processes) are
exercised on one machine; tests/test_multihost.py uses `launch()`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class ProcessResult:
    """One process of a launch: its id, exit status and the file its output went to."""

    process_id: int
    returncode: int
    log_path: str

    def log(self) -> str:
        """The process's output (stdout and stderr together)."""
        with open(self.log_path, errors="replace") as f:
            return f.read()


class LaunchError(RuntimeError):
    """A process failed or the group timed out; the message carries the failing process's log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for the coordinator)."""
    # Bind to port 0 so the kernel picks an unused port; a small race with other programs remains.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(
    process_id: int,
    num_processes: int,
    devices_per_process: int,
    port: int,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of process `process_id`: `base` (default: ours) plus the variables that
    ib_jax/distributed.py reads, CPU devices and this repository on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices_per_process),
        IB_JAX_COORDINATOR=f"127.0.0.1:{port}",
        IB_JAX_NUM_PROCESSES=str(num_processes),
        IB_JAX_PROCESS_ID=str(process_id),
    )
    # An inherited host-device count in XLA_FLAGS would fight JAX_NUM_CPU_DEVICES: drop just that flag.
    xla_flags = [
        f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")
    ]
    env["XLA_FLAGS"] = " ".join(xla_flags)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def launch(
    args: Sequence[str],
    num_processes: int,
    devices_per_process: int,
    *,
    timeout_s: float = 600.0,
    log_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str = REPO,
    check: bool = True,
) -> list[ProcessResult]:
    """Run `python *args` in `num_processes` processes that form one jax process group.

    Returns when all have exited. If one fails (or the timeout passes) the others are terminated
    — a surviving process would otherwise block forever in a collective — and, with `check`,
    LaunchError is raised with the failing process's log tail.
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(
            f"need >= 1 process and device, got {num_processes} x {devices_per_process}"
        )
    log_dir = log_dir or tempfile.mkdtemp(prefix="ib_jax_local_")
    os.makedirs(log_dir, exist_ok=True)
    port = free_port()
    procs, results = [], {}
    try:
        for i in range(num_processes):
            log_path = os.path.join(log_dir, f"process_{i}.log")
            with open(log_path, "w") as log:
                procs.append(
                    (
                        i,
                        log_path,
                        subprocess.Popen(
                            [sys.executable, *args],
                            cwd=cwd,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=process_env(i, num_processes, devices_per_process, port, env),
                        ),
                    )
                )
        deadline = time.monotonic() + timeout_s
        while len(results) < num_processes:
            for i, log_path, proc in procs:
                if i not in results and proc.poll() is not None:
                    results[i] = ProcessResult(i, proc.returncode, log_path)
            failed = [r for r in results.values() if r.returncode != 0]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for i, log_path, proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            results.setdefault(i, ProcessResult(i, proc.returncode, log_path))
    ordered = [results[i] for i in range(num_processes)]
    if check:
        bad = [r for r in ordered if r.returncode != 0]
        if bad:
            first = bad[0]
            raise LaunchError(
                f"process {first.process_id} of {num_processes} exited with {first.returncode} "
                f"(logs in {log_dir}); last lines:\n" + "\n".join(first.log().splitlines()[-40:])
            )
    return ordered


def define_flags() -> None:
    """The launcher's flags; called only when it runs as a program (see `ib_jax.contract.cli`)."""
    from absl import flags

    flags.DEFINE_integer("num_processes", 2, "processes in the group")
    flags.DEFINE_integer("devices_per_process", 4, "CPU devices of each process")
    flags.DEFINE_float("timeout_s", 3600.0, "terminate the group after this long")
    # --log_dir is absl's own flag ("directory to write logfiles into"): here the directory of
    # the process_<i>.log files (default: a temporary directory).
    flags.declare_key_flag("log_dir")


def main(argv: Sequence[str]) -> int:
    """Launch `python argv[1:]` (the arguments after `--`); the worst exit status of the group."""
    from absl import app, flags

    command = list(argv[1:])
    if not command:
        raise app.UsageError(
            "no command: pass the python arguments after `--`, e.g. -- -m ib_jax.train ...",
            exitcode=2,
        )
    values = flags.FLAGS
    results = launch(
        command,
        values.num_processes,
        values.devices_per_process,
        timeout_s=values.timeout_s,
        log_dir=values.log_dir or None,
        check=False,
    )
    for r in results:
        print(f"process {r.process_id}: exit {r.returncode}, log {r.log_path}")
    return max((abs(r.returncode) for r in results), default=0)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
