r"""Train or evaluate on a Cloud TPU VM slice: create (or reuse) it, copy this checkout, install, run.

    python -m launch.tpu_pod --name=ib-xxl --zone=us-east5-a --accelerator=v5p-128 \
        --config=configs/instructblip_flant5xxl.py --workdir=gs://my-bucket/runs/xxl [--dry-run]
    python -m launch.tpu_pod --job=evaluate --watch --name=ib-eval --accelerator=v5e-16 ...

Steps (each a gcloud command, all printed by --dry-run and nothing run):
  1. `tpu-vm describe`; if the slice does not exist, `tpu-vm create` (optionally --spot).
  2. `git archive HEAD` of this checkout -> `tpu-vm scp --worker=all` -> unpack in ~/ib_jax.
  3. On every worker: the interpreter the project is tested on (stock TPU VM images ship an older
     Python), provisioned with uv (`pip install --user uv`, then `uv python install`), a venv with
     the newest-stack lane's exact set (requirements.txt + constraints-newest.txt) and `jax[tpu]`
     (its pinned jax picks the matching libtpu), and the project installed editable.
  4. the same `python -m ib_jax.train ...` (or `ib_jax.evaluate`) on every worker (`tpu-vm ssh
     --worker=all`), with `IB_JAX_DISTRIBUTED=auto`: jax finds the coordinator and process ids
     from the TPU metadata.
The workdir must be shared by all workers (a gs:// bucket): Orbax writes one checkpoint from all
processes, and every worker resumes from it when the same command is run again. `--config` is a
path passed on to the workers (relative to the repository), not loaded here.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from collections.abc import Sequence

from launch.local import REPO

REMOTE_DIR = "ib_jax"
ARCHIVE = "/tmp/ib_jax_code.tar.gz"
JOBS = ("train", "evaluate")
# The newest-stack CI lane's interpreter and exact package set (see the Makefile): what is tested.
WORKER_PYTHON = "3.12"
WORKER_CONSTRAINTS = "constraints-newest.txt"
UV = "~/.local/bin/uv"


@dataclasses.dataclass(frozen=True)
class Pod:
    """The slice and the training run on it (the command-line flags, see `define_flags`)."""

    name: str
    zone: str
    config: str
    workdir: str
    project: str | None = None
    accelerator: str = "v5p-128"
    runtime_version: str = "v2-alpha-tpuv5"
    spot: bool = False
    python: str = WORKER_PYTHON
    job: str = "train"
    watch: bool = False
    skip_install: bool = False
    detach: bool = False
    dry_run: bool = False
    overrides: tuple[str, ...] = ()  # more ib_jax.train flags, e.g. --config.train.num_steps=10


def _gcloud_tpu(verb: str, name: str, flags: Pod, *extra: str) -> list[str]:
    """`gcloud compute tpus tpu-vm VERB NAME --zone=... [--project=...] EXTRA...`."""
    command = ["gcloud", "compute", "tpus", "tpu-vm", verb, name, f"--zone={flags.zone}"]
    if flags.project:
        command.append(f"--project={flags.project}")
    return command + list(extra)


def _on_all_workers(flags: Pod, script: str) -> list[str]:
    """Run a shell line on every worker of the slice."""
    return _gcloud_tpu("ssh", flags.name, flags, "--worker=all", f"--command={script}")


def job_command(flags: Pod) -> str:
    """The shell line every worker runs (the same on all of them): the train or eval job."""
    args = [
        "python",
        "-m",
        f"ib_jax.{flags.job}",
        f"--config={flags.config}",
        f"--workdir={flags.workdir}",
        *(["--watch"] if flags.watch else []),
        *flags.overrides,
    ]
    line = f"cd ~/{REMOTE_DIR} && IB_JAX_DISTRIBUTED=auto .venv/bin/" + " ".join(
        shlex.quote(a) for a in args
    )
    if flags.detach:  # survive the ssh session: logs in ~/ib_jax/<job>.log on each worker
        line = f"cd ~/{REMOTE_DIR} && nohup bash -c {shlex.quote(line)} > {flags.job}.log 2>&1 &"
    return line


def install_command(flags: Pod) -> str:
    """Unpack the code and build `.venv` on a worker, whatever Python its image ships.

    uv installs a standalone CPython of the tested version (no system package manager, no root),
    and resolves the same exact set the newest-stack CI lane tests, plus `jax[tpu]`: the jax pin
    in the constraints selects the libtpu release built for it.
    """
    venv_python = ".venv/bin/python"
    return " && ".join(
        [
            f"mkdir -p ~/{REMOTE_DIR}",
            f"tar -xzf ~/{ARCHIVE.rsplit('/', 1)[1]} -C ~/{REMOTE_DIR}",
            f"cd ~/{REMOTE_DIR}",
            "python3 -m pip install --user -q uv",
            f"{UV} python install {flags.python}",
            f"{UV} venv --python {flags.python} .venv",
            f"{UV} pip install --python {venv_python} -r requirements.txt "
            f"-c {WORKER_CONSTRAINTS} 'jax[tpu]'",
            f"{UV} pip install --python {venv_python} --no-deps -e .",
        ]
    )


def commands(flags: Pod) -> dict[str, list[list[str]]]:
    """Named steps -> the commands they run, in order."""
    create = _gcloud_tpu(
        "create",
        flags.name,
        flags,
        f"--accelerator-type={flags.accelerator}",
        f"--version={flags.runtime_version}",
        *(["--spot"] if flags.spot else []),
    )
    return {
        "describe": [_gcloud_tpu("describe", flags.name, flags, "--format=value(state)")],
        "create": [create],
        "copy": [
            ["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
            _gcloud_tpu("scp", ARCHIVE, flags, f"{flags.name}:~/", "--worker=all"),
        ],
        "install": [_on_all_workers(flags, install_command(flags))],
        "run": [_on_all_workers(flags, job_command(flags))],
    }


def _run(command: list[str], dry_run: bool, check: bool = True) -> int:
    """Print the command, then run it unless `dry_run`; its exit status."""
    print("+ " + " ".join(shlex.quote(c) for c in command), flush=True)
    if dry_run:
        return 0
    return subprocess.run(command, check=check).returncode


def define_flags() -> None:
    """The launcher's flags; called only when it runs as a program (see `ib_jax.cli`)."""
    from absl import flags

    flags.DEFINE_string("name", None, "TPU VM name (reused when it exists)", required=True)
    flags.DEFINE_string("zone", None, "GCP zone of the slice", required=True)
    flags.DEFINE_string("project", None, "GCP project (default: gcloud's)")
    flags.DEFINE_string("accelerator", "v5p-128", "accelerator type when creating, e.g. v5p-128")
    flags.DEFINE_string("runtime_version", "v2-alpha-tpuv5", "TPU VM software version")
    flags.DEFINE_bool("spot", False, "create a Spot slice")
    flags.DEFINE_string("python", WORKER_PYTHON, "Python version uv installs on the workers")
    flags.DEFINE_enum("job", "train", JOBS, "which job every worker runs")
    flags.DEFINE_bool("watch", False, "evaluate: every new checkpoint until training is done")
    flags.DEFINE_string(
        "config", None, "configs/*.py[:arg], relative to the repository", required=True
    )
    flags.DEFINE_string("workdir", None, "shared by all workers: gs://bucket/path", required=True)
    flags.DEFINE_bool("skip_install", False, "code and venv already on the workers")
    flags.DEFINE_bool("detach", False, "run training under nohup, return at once")
    flags.DEFINE_bool("dry_run", False, "print every command, run none")
    flags.DEFINE_alias("dry-run", "dry_run")


def main(argv: Sequence[str]) -> int:
    """Create or reuse the slice, install, run the job; `argv[1:]` (after `--`) go to the job."""
    from absl import app, flags

    values = flags.FLAGS
    pod = Pod(
        **{f.name: values[f.name].value for f in dataclasses.fields(Pod) if f.name != "overrides"},
        overrides=tuple(argv[1:]),
    )
    if not pod.workdir.startswith("gs://"):
        raise app.UsageError(
            f"--workdir={pod.workdir}: the workers need a shared gs:// workdir", exitcode=2
        )
    return run(pod)


def run(flags: Pod) -> int:
    """Print (dry run) or run every step for `flags`; the job's exit status."""
    steps = commands(flags)
    if flags.dry_run:
        print("# create the slice only if `describe` fails:")
        for name in ("describe", "create", "copy", "install", "run"):
            if flags.skip_install and name in ("copy", "install"):
                continue
            for command in steps[name]:
                _run(command, dry_run=True)
        return 0
    if _run(steps["describe"][0], dry_run=False, check=False) != 0:
        _run(steps["create"][0], dry_run=False)
    if not flags.skip_install:
        for command in steps["copy"] + steps["install"]:
            _run(command, dry_run=False)
    return _run(steps["run"][0], dry_run=False, check=False)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
