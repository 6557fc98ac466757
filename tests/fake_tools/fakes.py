"""Fake gcloud, srun, scontrol, sbatch and the worker-side tools the launchers' scripts call.

`install(bin_dir, state_dir)` writes one executable per tool into `bin_dir`; each runs this file
with the tool's name. Every call is appended to `state_dir/calls.jsonl` ({"tool", "argv",
"worker"}). Answers come from `state_dir/scenario.json`, queues popped one per call (the last
answer repeats):
    qr       queued-resources describe: a state, or "NOT_FOUND" (exit 1)
    node     tpu-vm describe: READY, PREEMPTED, ...
    running  pgrep on a worker: "yes" (exit 0) or "no"
    done     storage ls of the done marker: "present" or "missing"
    workers  (an int) how many workers a slice has
    busy_pids  pids `lsof -t /dev/accel*` reports (processes holding the TPU)
    job_exit the exit status of the venv's `python -m ib_jax.train`
`tpu-vm ssh --worker=all --command=CMD` runs CMD with bash on each worker in turn, HOME being
`state_dir/workers/<i>` (deleting the queued resource wipes them: a new slice has new disks), with
these fakes first on PATH: `sudo` records and runs only `lsof`/`kill`; `uv`, `python3 -m pip`, the
venv's python and `pgrep` record and answer as above. Nothing here touches a real cloud, scheduler
or another user's process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

TOOLS = ("gcloud", "srun", "scontrol", "sbatch", "sudo", "lsof", "python3", "pgrep")
HERE = os.path.abspath(__file__)


def _wrapper(tool: str, state_dir: str) -> str:
    return f'#!/bin/sh\nFAKE_STATE={state_dir} exec {sys.executable} {HERE} {tool} "$@"\n'


def _write_exe(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def install(bin_dir: str, state_dir: str, scenario: dict | None = None) -> None:
    """Write the fakes into `bin_dir` and the scenario into `state_dir`."""
    os.makedirs(state_dir, exist_ok=True)
    for tool in TOOLS:
        _write_exe(os.path.join(bin_dir, tool), _wrapper(tool, state_dir))
    with open(os.path.join(state_dir, "scenario.json"), "w") as f:
        json.dump(scenario or {}, f)


def calls(state_dir: str) -> list[dict]:
    """Every recorded call, in order."""
    path = os.path.join(state_dir, "calls.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------


def _state() -> str:
    return os.environ["FAKE_STATE"]


def _record(tool: str, argv: list[str]) -> None:
    # SRUN_CPUS_PER_TASK: what srun (Slurm >= 22.05) takes its CPUs per task from.
    line = json.dumps(
        {
            "tool": tool,
            "argv": argv,
            "worker": os.environ.get("FAKE_WORKER"),
            "srun_cpus_per_task": os.environ.get("SRUN_CPUS_PER_TASK"),
        }
    )
    with open(os.path.join(_state(), "calls.jsonl"), "a") as f:
        f.write(line + "\n")


def _pop(key: str, default):
    path = os.path.join(_state(), "scenario.json")
    with open(path) as f:
        scenario = json.load(f)
    queue = scenario.get(key)
    if not queue:
        return default
    if not isinstance(queue, list):
        return queue
    value = queue.pop(0) if len(queue) > 1 else queue[0]
    with open(path, "w") as f:
        json.dump(scenario, f)
    return value


def _flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def _workers() -> list[str]:
    count = _pop("workers", 2)
    return [os.path.join(_state(), "workers", str(i)) for i in range(count)]


def gcloud(argv: list[str]) -> int:
    words = [a for a in argv if not a.startswith("-") and a != "alpha"]
    verb = " ".join(words[:4])
    if verb == "compute tpus queued-resources describe":
        state = _pop("qr", "NOT_FOUND")
        if state == "NOT_FOUND":
            print(
                "ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND", file=sys.stderr
            )
            return 1
        print(state)
    elif verb == "compute tpus tpu-vm describe":
        print(_pop("node", "READY"))
    elif verb == "compute tpus queued-resources delete":
        shutil.rmtree(os.path.join(_state(), "workers"), ignore_errors=True)
    elif verb.startswith("compute tpus tpu-vm scp"):
        for home in _workers():
            os.makedirs(home, exist_ok=True)
            shutil.copy(words[4], home)
    elif verb.startswith("compute tpus tpu-vm ssh"):
        status = 0
        for i, home in enumerate(_workers()):
            os.makedirs(home, exist_ok=True)
            env = dict(os.environ, HOME=home, FAKE_WORKER=str(i))  # the fakes are first on PATH
            done = subprocess.run(["bash", "-c", _flag(argv, "command")], cwd=home, env=env)
            status = max(status, done.returncode)
        return status
    elif verb == "storage ls":
        return 0 if _pop("done", "missing") == "present" else 1
    return 0


def uv(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        print("uv 0.13.8")
    elif argv[:1] == ["venv"]:
        target = argv[-1]
        if os.path.exists(target):  # as uv does without --allow-existing
            print(f"error: A virtual environment already exists at `{target}`", file=sys.stderr)
            return 2
        _write_exe(os.path.join(target, "bin", "python"), _wrapper("job-python", _state()))
    return 0


def main() -> int:
    tool, argv = sys.argv[1], sys.argv[2:]
    _record(tool, argv)
    if tool == "gcloud":
        return gcloud(argv)
    if tool == "uv":
        return uv(argv)
    if tool == "python3":  # the image's Python: only `pip install --user uv==...` is expected
        if argv[:3] == ["-m", "pip", "install"] and any(a.startswith("uv==") for a in argv):
            home_bin = os.path.join(os.environ["HOME"], ".local", "bin")
            _write_exe(os.path.join(home_bin, "uv"), _wrapper("uv", _state()))
            return 0
        return 1
    if tool == "sudo":
        if argv[0] in ("lsof", "kill"):
            os.execvp(argv[0], argv)
        return 0
    if tool == "lsof":
        with open(os.path.join(_state(), "scenario.json")) as f:
            print("\n".join(str(pid) for pid in json.load(f).get("busy_pids", [])))
        return 0
    if tool == "pgrep":
        return 0 if _pop("running", "no") == "yes" else 1
    if tool == "scontrol":
        if argv[:2] == ["show", "hostnames"]:
            print("\n".join(argv[2].split(",")))
        return 0
    if tool == "srun":
        return srun(argv)
    if tool == "job-python" and argv[:2] == ["-m", "ib_jax.train"]:
        return int(_pop("job_exit", 0))
    return 0  # sbatch, job-python


def srun(argv: list[str]) -> int:
    """Start --ntasks copies of the command at once, each with the variables srun gives a task
    (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_*); all "nodes" are this machine."""
    command = argv[next(i for i, a in enumerate(argv) if not a.startswith("--")) :]
    ntasks = int(_flag(argv, "ntasks", "1"))
    per_node = int(_flag(argv, "ntasks-per-node", str(ntasks)))
    nodes = os.environ["SLURM_JOB_NODELIST"].split(",")
    output = _flag(argv, "output")
    procs = []
    for task in range(ntasks):
        env = dict(
            os.environ,
            SLURM_PROCID=str(task),
            SLURM_LOCALID=str(task % per_node),
            SLURM_NODEID=str(task // per_node),
            SLURMD_NODENAME=nodes[task // per_node],
            SLURM_STEP_NODELIST=os.environ["SLURM_JOB_NODELIST"],
            SLURM_STEP_NUM_NODES=str(len(nodes)),
            SLURM_NTASKS=str(ntasks),
            SLURM_CPUS_PER_TASK=_flag(argv, "cpus-per-task", "1"),
        )
        log = None
        if output:
            path = output.replace("%j", os.environ.get("SLURM_JOB_ID", "0"))
            log = open(path.replace("%t", str(task)), "a")  # closed below
        proc = subprocess.Popen(
            command, env=env, cwd=_flag(argv, "chdir"), stdout=log, stderr=subprocess.STDOUT
        )
        procs.append((proc, log))
    status = 0
    for proc, log in procs:
        status = max(status, proc.wait())
        if log:
            log.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
