"""launch/slurm_gpu.sh under a fake `srun`/`scontrol` (tests/fake_tools/fakes.py): every task joins
the process group through ib_jax/distributed.py and jax's own SLURM detection, and is left with
all of its node's GPUs; CPUs per task reach srun; a job stopped at its time limit requeues itself."""

import json
import os
import shlex
import subprocess
import sys

from launch.local import free_port
from tests.fake_tools import fakes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What each task's "trainer" does here: join the group as ib_jax.train does, then report which
# GPUs jax would open (xla_bridge reads jax_cuda_visible_devices when it creates the GPU client).
PROBE = """
import json, sys
import jax, ml_collections
from jax._src import xla_bridge
from ib_jax import distributed
distributed.initialize(ml_collections.ConfigDict())
print("PROBE " + json.dumps({"process": jax.process_index(), "count": jax.process_count(),
                             "gpus": xla_bridge.CUDA_VISIBLE_DEVICES.value, "argv": sys.argv[1:]}))
jax.distributed.shutdown()
sys.exit(int(__import__("os").environ.get("PROBE_EXIT", "0")))
"""


def _fake_venv(tmp_path):
    """A venv whose python runs PROBE instead of the module it is given (but runs `-c` code)."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n'
        f'exec {sys.executable} {probe} "$@"\n'
    )
    python.chmod(0o755)
    return str(tmp_path / "venv")


def _sbatch(tmp_path, workdir, nodes=2, gpus_per_node=8, **extra_env):
    """Run the batch script as sbatch would on `nodes` nodes (all this machine)."""
    bin_dir, state = str(tmp_path / "bin"), str(tmp_path / "state")
    fakes.install(bin_dir, state)
    env = dict(
        os.environ,
        PATH=bin_dir + os.pathsep + os.environ["PATH"],
        VENV=_fake_venv(tmp_path),
        LOG_DIR=str(tmp_path / "logs"),
        IB_JAX_PORT=str(free_port()),
        JAX_PLATFORMS="cpu",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST=",".join(["localhost"] * nodes),
        SLURM_NNODES=str(nodes),
        SLURM_NTASKS=str(nodes),
        SLURM_CPUS_PER_TASK="12",
        SLURM_GPUS_ON_NODE=str(gpus_per_node),
        SLURM_SUBMIT_DIR=REPO,
        **extra_env,
    )
    done = subprocess.run(
        ["bash", "launch/slurm_gpu.sh", "configs/tiny.py", str(workdir), "--config.train.num_steps=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    logs = {}
    for task in range(nodes):
        with open(tmp_path / "logs" / f"4242-task{task}.out") as f:
            logs[task] = f.read()
    return done, fakes.calls(state), logs


def _probes(logs):
    return {
        task: json.loads(line.split("PROBE ", 1)[1])
        for task, text in logs.items()
        for line in text.splitlines()
        if line.startswith("PROBE ")
    }


def test_each_task_gets_all_gpus_of_its_node_and_cpus_reach_srun(tmp_path):
    done, calls, logs = _sbatch(tmp_path, tmp_path / "run")
    assert done.returncode == 0, done.stdout + done.stderr + str(logs)
    probes = _probes(logs)
    assert sorted(p["process"] for p in probes.values()) == [0, 1], logs
    for probe in probes.values():
        assert probe["count"] == 2
        assert probe["gpus"] == "0,1,2,3,4,5,6,7"  # not "0": every GPU of the node
        assert probe["argv"][:2] == ["-m", "ib_jax.train"]
    srun = next(c for c in calls if c["tool"] == "srun")
    assert "--cpus-per-task=12" in srun["argv"] and srun["srun_cpus_per_task"] == "12"
    assert "--ntasks=2" in srun["argv"] and "--ntasks-per-node=1" in srun["argv"]
    # The run stopped (SIGTERM at the time limit: the trainer saved and exited 0) before
    # TRAINING_DONE: the job requeues itself to resume.
    assert ["requeue", "4242"] in [c["argv"] for c in calls if c["tool"] == "scontrol"]


def test_jax_alone_would_give_a_task_one_gpu(tmp_path):
    """The failure the script prevents: one task per node, no JAX_LOCAL_DEVICE_IDS -> jax's SLURM
    detection sets local_device_ids=[SLURM_LOCALID], i.e. GPU 0 only (jax-ml/jax#16788)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        SLURM_JOB_ID="4242",
        SLURM_STEP_NODELIST="localhost",
        SLURM_NTASKS="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        IB_JAX_COORDINATOR=f"localhost:{free_port()}",
        IB_JAX_NUM_PROCESSES="1",
        IB_JAX_PROCESS_ID="0",
    )
    for ids, expected in ((None, "0"), ("0,1,2,3", "0,1,2,3")):
        env.pop("JAX_LOCAL_DEVICE_IDS", None)
        if ids:
            env["JAX_LOCAL_DEVICE_IDS"] = ids
        done = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        probe = json.loads(done.stdout.split("PROBE ", 1)[1])
        assert probe["gpus"] == expected


def test_a_finished_or_failed_run_is_not_requeued(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "TRAINING_DONE").write_text("")
    done, calls, _ = _sbatch(tmp_path, workdir, nodes=1)
    assert done.returncode == 0, done.stderr
    assert not [c for c in calls if c["tool"] == "scontrol" and c["argv"][0] == "requeue"]
    done, calls, _ = _sbatch(tmp_path / "failed", tmp_path / "other", nodes=1, PROBE_EXIT="3")
    assert done.returncode == 3
    assert not [c for c in calls if c["tool"] == "scontrol" and c["argv"][0] == "requeue"]


def test_dry_run_uses_the_first_host_as_coordinator():
    env = dict(
        os.environ,
        SLURM_JOB_NODELIST="gpu[003-006]",
        SLURM_NTASKS="4",
        DRY_RUN="1",
        PATH="/usr/bin:/bin",
    )
    done = subprocess.run(
        ["bash", "launch/slurm_gpu.sh", "configs/instructblip_vicuna7b.py", "/shared/v7b",
         "--config.train.num_steps=10"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, command = done.stdout.splitlines()[:2]
    assert first == "IB_JAX_COORDINATOR=gpu003:12355 IB_JAX_NUM_PROCESSES=4"
    srun = shlex.split(command)
    assert srun[:4] == ["srun", "--ntasks=4", "--ntasks-per-node=1", "--cpus-per-task=32"]
    assert srun[-5:] == [
        "-m",
        "ib_jax.train",
        "--config=configs/instructblip_vicuna7b.py",
        "--workdir=/shared/v7b",
        "--config.train.num_steps=10",
    ]


def test_batch_script_asks_for_the_signal_and_requeue():
    with open(os.path.join(REPO, "launch", "slurm_gpu.sh")) as f:
        directives = [line.split()[1] for line in f if line.startswith("#SBATCH")]
    assert "--signal=TERM@120" in directives and "--requeue" in directives
