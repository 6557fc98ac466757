"""Train on a Cloud TPU VM slice: create (or reuse) it, copy this checkout, install, run on every worker.

    python -m launch.tpu_pod --name=ib-xxl --zone=us-east5-a --accelerator=v5p-128 \
        --config=configs/instructblip_flant5xxl.py --workdir=gs://my-bucket/runs/xxl [--dry-run]

Steps (each a gcloud command, all printed by --dry-run and nothing run):
  1. `tpu-vm describe`; if the slice does not exist, `tpu-vm create` (optionally --spot).
  2. `git archive HEAD` of this checkout -> `tpu-vm scp --worker=all` -> unpack in ~/ib_jax.
  3. `make venv` (requirements.txt + constraints.txt) and `jax[tpu]` of the pinned jax version.
  4. the same `python -m ib_jax.train ...` on every worker (`tpu-vm ssh --worker=all`), with
     `IB_JAX_DISTRIBUTED=auto`: jax finds the coordinator and process ids from the TPU metadata.
The workdir must be shared by all workers (a gs:// bucket): Orbax writes one checkpoint from all
processes, and every worker resumes from it when the same command is run again.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence

from launch.local import REPO

REMOTE_DIR = "ib_jax"
ARCHIVE = "/tmp/ib_jax_code.tar.gz"


def _gcloud_tpu(verb: str, name: str, flags: argparse.Namespace, *extra: str) -> list[str]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", verb, name, f"--zone={flags.zone}"]
    if flags.project:
        command.append(f"--project={flags.project}")
    return command + list(extra)


def _on_all_workers(flags: argparse.Namespace, script: str) -> list[str]:
    return _gcloud_tpu("ssh", flags.name, flags, "--worker=all", f"--command={script}")


def train_command(flags: argparse.Namespace) -> str:
    """The shell line every worker runs (the same on all of them)."""
    args = [
        "python",
        "-m",
        "ib_jax.train",
        f"--config={flags.config}",
        f"--workdir={flags.workdir}",
        *flags.overrides,
    ]
    line = f"cd ~/{REMOTE_DIR} && IB_JAX_DISTRIBUTED=auto .venv/bin/" + " ".join(
        shlex.quote(a) for a in args
    )
    if flags.detach:  # survive the ssh session: logs in ~/ib_jax/train.log on each worker
        line = f"cd ~/{REMOTE_DIR} && nohup bash -c {shlex.quote(line)} > train.log 2>&1 &"
    return line


def commands(flags: argparse.Namespace) -> dict[str, list[list[str]]]:
    """Named steps -> the commands they run, in order."""
    create = _gcloud_tpu(
        "create",
        flags.name,
        flags,
        f"--accelerator-type={flags.accelerator}",
        f"--version={flags.runtime_version}",
        *(["--spot"] if flags.spot else []),
    )
    install = (
        f"mkdir -p ~/{REMOTE_DIR} && tar -xzf ~/{ARCHIVE.rsplit('/', 1)[1]} -C ~/{REMOTE_DIR} && "
        f"cd ~/{REMOTE_DIR} && make venv PYTHON={flags.python} && "
        f'.venv/bin/pip install -q -c constraints.txt "jax[tpu]==$(.venv/bin/python -c '
        f"'import jax; print(jax.__version__)')\""
    )
    return {
        "describe": [_gcloud_tpu("describe", flags.name, flags, "--format=value(state)")],
        "create": [create],
        "copy": [
            ["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
            _gcloud_tpu("scp", ARCHIVE, flags, f"{flags.name}:~/", "--worker=all"),
        ],
        "install": [_on_all_workers(flags, install)],
        "train": [_on_all_workers(flags, train_command(flags))],
    }


def _run(command: list[str], dry_run: bool, check: bool = True) -> int:
    print("+ " + " ".join(shlex.quote(c) for c in command), flush=True)
    if dry_run:
        return 0
    return subprocess.run(command, check=check).returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="TPU VM name (reused when it exists)")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument(
        "--accelerator", default="v5p-128", help="accelerator type when creating, e.g. v5p-128"
    )
    parser.add_argument(
        "--runtime_version", default="v2-alpha-tpuv5", help="TPU VM software version"
    )
    parser.add_argument("--spot", action="store_true")
    parser.add_argument(
        "--python", default="python3.11", help="interpreter on the workers for `make venv`"
    )
    parser.add_argument(
        "--config", required=True, help="configs/*.py[:arg], relative to the repository"
    )
    parser.add_argument("--workdir", required=True, help="shared by all workers: gs://bucket/path")
    parser.add_argument(
        "--skip_install", action="store_true", help="code and venv already on the workers"
    )
    parser.add_argument(
        "--detach", action="store_true", help="run training under nohup, return at once"
    )
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="print every command, run none",
    )
    parser.add_argument(
        "overrides", nargs="*", help="after `--`: more ib_jax.train flags (--config.train.x=...)"
    )
    flags = parser.parse_args(argv)
    if not flags.workdir.startswith("gs://"):
        parser.error(f"--workdir={flags.workdir}: the workers need a shared gs:// workdir")
    steps = commands(flags)
    if flags.dry_run:
        print("# create the slice only if `describe` fails:")
        for name in ("describe", "create", "copy", "install", "train"):
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
    return _run(steps["train"][0], dry_run=False, check=False)


if __name__ == "__main__":
    sys.exit(main())
