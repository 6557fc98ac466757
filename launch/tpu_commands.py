"""The commands launch/tpu_pod.py runs: gcloud calls (argv lists) and the shell lines the workers run.

Pure functions of a `Pod` (the launcher's flags), so `--dry_run` prints exactly what a launch runs
and the tests compare it with launch/README.md, which cites the Cloud TPU page each one follows.

Worker layout (the same on every worker of the slice):
    ~/ib_jax/           this checkout (`git archive HEAD`), replaced on every launch
    ~/ib_jax_venv/      the interpreter and packages, built once per set of pins (`.installed-<hash>`)
    ~/ib_jax_logs/      `<job>.console.log`: the job's console, appended to by every relaunch
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import tempfile
import tomllib

from launch.local import REPO

CODE_DIR = "~/ib_jax"
VENV_DIR = "~/ib_jax_venv"
LOG_DIR = "~/ib_jax_logs"
JOBS = ("train", "evaluate")
# The newest-stack CI lane's interpreter and exact package set (see the Makefile): what is tested.
WORKER_PYTHON = "3.12"
WORKER_REQUIREMENTS = ("requirements.txt", "constraints-newest.txt")
UV_VERSION = "0.13.8"  # pinned: the install line below is tested against this uv's behaviour
DONE_MARKER = "TRAINING_DONE"  # ib_jax.checkpoint.FINAL_MARKER (this module imports no ib_jax)


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: how gcloud names its slices and which TPU VM image runs JAX on it."""

    prefix: str  # accelerator type is f"{prefix}-{size}"
    runtime_version: str
    size_unit: str  # what the size counts
    chips_per_host: int  # chips (= JAX devices) per worker of a multi-host slice
    single_host_chips: int  # the largest slice that is one worker


# Cloud TPU docs, "TPU software versions" (cloud.google.com/tpu/docs/runtimes) and the per-generation
# pages (tpu/docs/v4, v5e, v5p, v6e) for names and hosts; see launch/README.md.
GENERATIONS = {
    "v4": Generation("v4", "tpu-ubuntu2204-base", "TensorCores", 4, 4),
    "v5e": Generation("v5litepod", "v2-alpha-tpuv5-lite", "chips", 4, 8),
    "v5p": Generation("v5p", "v2-alpha-tpuv5", "TensorCores", 4, 4),
    "v6e": Generation("v6e", "v2-alpha-tpuv6e", "chips", 4, 8),
}
# v4 and v5p count TensorCores (2 per chip, one JAX device per chip); v5e and v6e count chips.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}


def parse_accelerator(accelerator: str) -> tuple[str, int]:
    """`v5p-128`, `v5litepod-16` or `v5e-16` (the planner's name) -> (generation key, size)."""
    match = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", accelerator)
    if not match:
        known = ", ".join(f"{g.prefix}-N" for g in GENERATIONS.values())
        raise ValueError(f"--accelerator={accelerator}: expected one of {known} (or v5e-N)")
    key = "v5e" if match.group(1) == "v5litepod" else match.group(1)
    return key, int(match.group(2))


def accelerator_type(accelerator: str) -> str:
    """The name gcloud takes (`v5e-16` -> `v5litepod-16`)."""
    key, size = parse_accelerator(accelerator)
    return f"{GENERATIONS[key].prefix}-{size}"


def devices_per_host(accelerator: str) -> int:
    """JAX devices each worker of the slice sees (one per chip)."""
    key, size = parse_accelerator(accelerator)
    chips = size // _CORES_PER_CHIP[key]
    gen = GENERATIONS[key]
    return chips if chips <= gen.single_host_chips else gen.chips_per_host


@dataclasses.dataclass(frozen=True)
class Pod:
    """The slice and the job on it (the command-line flags, see `launch.tpu_pod.define_flags`)."""

    name: str
    zone: str
    config: str
    workdir: str
    project: str | None = None
    accelerator: str = "v5p-128"
    runtime_version: str = ""  # default: the generation's (GENERATIONS)
    spot: bool = False
    best_effort: bool = False
    reserved: bool = False
    python: str = WORKER_PYTHON
    job: str = "train"
    watch: bool = False
    keep: bool = False
    detach: bool = True
    skip_install: bool = False
    preflight: bool = True
    min_disk_gb: float = 20.0
    poll_s: float = 60.0
    max_restarts: int = 3
    dry_run: bool = False
    overrides: tuple[str, ...] = ()  # more job flags, e.g. --config.train.num_steps=10

    @property
    def runtime(self) -> str:
        """The TPU VM software version: the flag, or the generation's."""
        key, _ = parse_accelerator(self.accelerator)
        return self.runtime_version or GENERATIONS[key].runtime_version


def _zone_project(pod: Pod) -> list[str]:
    return [f"--zone={pod.zone}"] + ([f"--project={pod.project}"] if pod.project else [])


def describe_queued_resource(pod: Pod) -> list[str]:
    """The queued resource's state (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, ...)."""
    return [
        "gcloud", "compute", "tpus", "queued-resources", "describe", pod.name,
        *_zone_project(pod), "--format=value(state.state)",
    ]  # fmt: skip


def describe_node(pod: Pod) -> list[str]:
    """The TPU VM's own state (READY, PREEMPTED, TERMINATED, ...)."""
    return [
        "gcloud", "compute", "tpus", "tpu-vm", "describe", pod.name,
        *_zone_project(pod), "--format=value(state)",
    ]  # fmt: skip


def create_queued_resource(pod: Pod) -> list[str]:
    """Request the slice; the node is named like the request. `--best-effort` is alpha-only."""
    tier = (
        ["--spot"] * pod.spot + ["--best-effort"] * pod.best_effort + ["--reserved"] * pod.reserved
    )
    alpha = ["alpha"] if pod.best_effort else []
    return [
        "gcloud", *alpha, "compute", "tpus", "queued-resources", "create", pod.name,
        f"--node-id={pod.name}", *_zone_project(pod),
        f"--accelerator-type={accelerator_type(pod.accelerator)}",
        f"--runtime-version={pod.runtime}", *tier,
    ]  # fmt: skip


def delete_queued_resource(pod: Pod) -> list[str]:
    """Delete the request and its TPU VMs (`--force`), without the confirmation prompt."""
    return [
        "gcloud", "compute", "tpus", "queued-resources", "delete", pod.name,
        *_zone_project(pod), "--force", "--quiet",
    ]  # fmt: skip


def on_all_workers(pod: Pod, script: str) -> list[str]:
    """Run a shell script on every worker of the slice, in parallel."""
    return [
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", pod.name, *_zone_project(pod),
        "--worker=all", f"--command={script}",
    ]  # fmt: skip


def archive_path(pod: Pod) -> str:
    """Where the local `git archive` goes (one per slice name: launches do not clobber another)."""
    return os.path.join(tempfile.gettempdir(), f"ib_jax_code-{pod.name}.tar.gz")


def copy_code(pod: Pod) -> list[list[str]]:
    """`git archive HEAD` -> every worker -> a fresh ~/ib_jax (the venv lives elsewhere)."""
    archive = archive_path(pod)
    name = os.path.basename(archive)
    return [
        ["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
        [
            "gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{pod.name}:~/",
            *_zone_project(pod), "--worker=all",
        ],
        on_all_workers(
            pod, f"rm -rf {CODE_DIR} && mkdir -p {CODE_DIR} && tar -xzf ~/{name} -C {CODE_DIR}"
        ),
    ]  # fmt: skip


def extra_requirements(extra: str = "gcs") -> list[str]:
    """pyproject.toml's `[project.optional-dependencies]` entry: one list for pip users and pods."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["project"]["optional-dependencies"][extra])


def install_hash(pod: Pod) -> str:
    """Changes when anything the venv is built from changes (the pins, the extras, uv, Python)."""
    digest = hashlib.sha256(f"{pod.python} {UV_VERSION} {extra_requirements()}".encode())
    for name in WORKER_REQUIREMENTS:
        with open(os.path.join(REPO, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def install_script(pod: Pod) -> str:
    """Build ~/ib_jax_venv once per set of pins; a rerun finds the stamp and does nothing.

    Stock TPU VM images ship an older Python than the project is tested on: uv (pinned) installs
    a standalone CPython and resolves the newest-stack CI lane's exact set plus `jax[tpu]` (the jax
    pin selects its libtpu) and the `gcs` extra (gcsfs: gs:// paths through etils.epath).
    """
    stamp = f"{VENV_DIR}/.installed-{install_hash(pod)}"
    python = f"{VENV_DIR}/bin/python"
    packages = " ".join(shlex.quote(p) for p in ["jax[tpu]", *extra_requirements()])
    requirements, constraints = WORKER_REQUIREMENTS
    return "; ".join(
        [
            "set -e",
            'export PATH="$HOME/.local/bin:$PATH"',
            f"uv --version 2>/dev/null | grep -q '^uv {re.escape(UV_VERSION)}' || "
            f"python3 -m pip install --user -q uv=={UV_VERSION}",
            f'if [ -f {stamp} ]; then echo "ib_jax: {VENV_DIR} is up to date"; exit 0; fi',
            f"uv python install {pod.python}",
            # A venv whose interpreter is missing is rebuilt; an existing one is reused.
            f"[ -x {python} ] || {{ rm -rf {VENV_DIR} && uv venv --python {pod.python} {VENV_DIR}; }}",
            f"uv pip install --python {python} -r {CODE_DIR}/{requirements} "
            f"-c {CODE_DIR}/{constraints} {packages}",
            f"rm -f {VENV_DIR}/.installed-* && touch {stamp}",
        ]
    )


# Matches the job's interpreter, not this script's own command line (the [i] trick).
_JOB_PATTERN = "[i]b_jax_venv/bin/python -m"


def stop_script() -> str:
    """End whatever holds the TPU (a previous run, a stale process) and clear libtpu's lock file.

    As MaxText's kill_script.sh: processes with the TPU device open (/dev/accel* on v4, /dev/vfio/*
    on v5e/v5p/v6e), then /tmp/libtpu_lockfile, which a killed process leaves behind and which
    makes the next one fail with "TPU is already in use" (jax-ml/jax#10192).
    """
    return "; ".join(
        [
            f"sudo pkill -9 -f '{_JOB_PATTERN}' || true",
            "sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u | xargs -r sudo kill -9 "
            "|| true",
            "sudo rm -f /tmp/libtpu_lockfile",
        ]
    )


def preflight_script(pod: Pod) -> str:
    """launch/tpu_preflight.py on every worker (devices per host, bucket read/write, disk)."""
    args = [
        f"--workdir={pod.workdir}",
        f"--devices_per_host={devices_per_host(pod.accelerator)}",
        f"--min_disk_gb={pod.min_disk_gb:g}",
    ]
    return (
        f"cd {CODE_DIR} && IB_JAX_DISTRIBUTED=auto {VENV_DIR}/bin/python -m launch.tpu_preflight "
        + " ".join(shlex.quote(a) for a in args)
    )


def job_argv(pod: Pod) -> list[str]:
    """The job every worker runs (the same on all of them)."""
    return [
        f"{VENV_DIR}/bin/python",
        "-m",
        f"ib_jax.{pod.job}",
        f"--config={pod.config}",
        f"--workdir={pod.workdir}",
        *(["--watch"] if pod.watch and pod.job == "evaluate" else []),
        *pod.overrides,
    ]


def console_log(pod: Pod) -> str:
    """The job's console on a worker (appended to by every (re)launch)."""
    return f"{LOG_DIR}/{pod.job}.console.log"


def collect_script(pod: Pod) -> str:
    """Copy this worker's logs (console, and the job's log file: /tmp/ib_jax_logs for a bucket
    workdir, see ib_jax.contract.cli.log_file_path) to WORKDIR/launch_logs/<hostname>/."""
    target = f"{pod.workdir.rstrip('/')}/launch_logs/$(hostname)/"
    return (
        f'gcloud storage cp {console_log(pod)} /tmp/ib_jax_logs/{pod.job}*.log "{target}" || true'
    )


def start_script(pod: Pod) -> str:
    """Start the job on a worker: detached (setsid nohup, survives the ssh session and the
    launching machine) or attached; either way its logs go to the workdir when it ends."""
    python, *args = job_argv(pod)  # the interpreter's ~ must stay unquoted to expand
    job = f"IB_JAX_DISTRIBUTED=auto {python} " + " ".join(shlex.quote(a) for a in args)
    run = f"{job}; status=$?; {collect_script(pod)}; exit $status"
    prefix = f"mkdir -p {LOG_DIR} && cd {CODE_DIR} && "
    if pod.detach:
        return (
            prefix + f"setsid nohup bash -c {shlex.quote(run)} >> {console_log(pod)} 2>&1 "
            "< /dev/null &"
        )
    return prefix + f"set -o pipefail; bash -c {shlex.quote(run)} 2>&1 | tee -a {console_log(pod)}"


def running_script() -> str:
    """Exit 0 when the job's interpreter runs on this worker."""
    return f"pgrep -f '{_JOB_PATTERN}' > /dev/null"


def done_marker(pod: Pod) -> list[str]:
    """Exit 0 when WORKDIR/TRAINING_DONE exists (`gcloud storage`: no gcsfs needed here)."""
    return ["gcloud", "storage", "ls", f"{pod.workdir.rstrip('/')}/{DONE_MARKER}"]
