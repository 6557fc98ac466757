r"""Train or evaluate on a Cloud TPU slice: request it, copy this checkout, install, check, run, clean up.

    python -m launch.tpu_pod --name=ib-xxl --zone=us-east5-a --accelerator=v5p-128 --spot --watch \
        --config=configs/instructblip_flant5xxl.py --workdir=gs://BUCKET/runs/xxl [--dry_run] [-- ...]
    python -m launch.tpu_pod --job=evaluate --watch --name=ib-eval --zone=us-west4-a \
        --accelerator=v5litepod-16 --config=configs/eval_heldout.py --workdir=gs://BUCKET/runs/xxl

Sequence (every command is in launch/tpu_commands.py, each cited in launch/README.md):
  1. slice: `queued-resources describe`; none -> `queued-resources create` (--spot, --best-effort
     or --reserved); FAILED/SUSPENDED (or the node PREEMPTED) -> `delete --force`, create again;
     poll until ACTIVE.
  2. code: `git archive HEAD` -> `tpu-vm scp --worker=all` -> a fresh ~/ib_jax on every worker.
  3. install (skipped by a worker whose venv is already built from the same pins).
  4. stop stale processes holding the TPU, remove /tmp/libtpu_lockfile.
  5. preflight (launch/tpu_preflight.py): devices per host, bucket read/write, disk.
  6. the job on every worker (`IB_JAX_DISTRIBUTED=auto`: jax finds the coordinator and process
     ids from the TPU metadata), detached by default (setsid nohup; logs to WORKDIR/launch_logs/).
  7. `--watch`: poll until WORKDIR/TRAINING_DONE exists and the job has exited; a preempted slice
     is recreated and the job relaunched (it resumes from its last checkpoint); a job that died
     is relaunched up to --max_restarts times. Then the logs are collected and the slice deleted
     (`--keep` keeps it). Without `--watch` a detached job is left running on its slice.
A `--watch` launch that finds its job already running on the slice attaches to it (no restart).
`--dry_run` prints the commands of a launch on a fresh slice and runs none.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from launch import tpu_commands as tc
from launch.tpu_commands import JOBS, WORKER_PYTHON, Pod

WAITING = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING")
GONE = ("FAILED", "SUSPENDING", "SUSPENDED")  # the request must be deleted and made again
NODE_GONE = ("PREEMPTED", "TERMINATED")


class LaunchError(RuntimeError):
    """A step failed (its command is in the message)."""


class Shell:
    """Runs (or, dry, prints) commands; a dry run answers as a fresh slice would."""

    def __init__(self, dry_run: bool, sleep: Callable[[float], None] = time.sleep):
        self.dry_run = dry_run
        self.sleep = (lambda seconds: None) if dry_run else sleep
        self._dry_described = False

    def __call__(
        self, argv: list[str], *, capture: bool = False, check: bool = True
    ) -> tuple[int, str]:
        """The command's (exit status, stdout if captured)."""
        print("+ " + " ".join(shlex.quote(a) for a in argv), flush=True)
        if self.dry_run:
            return self._dry_answer(argv)
        done = subprocess.run(argv, text=True, stdout=subprocess.PIPE if capture else None)
        if check and done.returncode != 0:
            raise LaunchError(f"exit status {done.returncode}: {shlex.join(argv)[:300]}")
        return done.returncode, (done.stdout or "").strip()

    def _dry_answer(self, argv: list[str]) -> tuple[int, str]:
        if "queued-resources" in argv and "describe" in argv:
            state, self._dry_described = ("ACTIVE" if self._dry_described else ""), True
            return (0, state) if state else (1, "")
        if "describe" in argv:
            return 0, "READY"
        if any(a.startswith("--command=pgrep") for a in argv):
            return 1, ""  # the job has exited ...
        return 0, ""  # ... and written its done marker


@dataclasses.dataclass
class Launcher:
    """One launch of `pod`'s job, through `shell`."""

    pod: Pod
    shell: Shell

    def log(self, message: str) -> None:
        """One line of the launcher's own progress."""
        print(f"tpu_pod {self.pod.name}: {message}", flush=True)

    def state(self) -> str:
        """The queued resource's state ('' when there is none), or PREEMPTED/TERMINATED when the
        request is ACTIVE but its node is gone."""
        status, state = self.shell(tc.describe_queued_resource(self.pod), capture=True, check=False)
        if status != 0:
            return ""
        if state == "ACTIVE":
            _, node = self.shell(tc.describe_node(self.pod), capture=True, check=False)
            if node in NODE_GONE:
                return node
        return state

    def ensure_slice(self) -> None:
        """Create the slice if needed, replace a failed/preempted one, wait until it is ACTIVE."""
        state = self.state()
        while state != "ACTIVE":
            if state in GONE + NODE_GONE:
                self.log(f"slice is {state}: deleting it to request a new one")
                self.shell(tc.delete_queued_resource(self.pod))
                state = ""
            if not state:
                self.shell(tc.create_queued_resource(self.pod))
            elif state not in WAITING:
                raise LaunchError(f"queued resource {self.pod.name} is in state {state!r}")
            else:
                self.log(f"slice is {state}, waiting")
                self.shell.sleep(self.pod.poll_s)
            state = self.state()

    def prepare_and_start(self) -> int:
        """Code, install, stale processes, preflight, start; the start's exit status."""
        for argv in tc.copy_code(self.pod):
            self.shell(argv)
        if not self.pod.skip_install:
            self.shell(tc.on_all_workers(self.pod, tc.install_script(self.pod)))
        self.shell(tc.on_all_workers(self.pod, tc.stop_script()))
        if self.pod.preflight:
            status, _ = self.shell(
                tc.on_all_workers(self.pod, tc.preflight_script(self.pod)), check=False
            )
            if status != 0:
                raise LaunchError("preflight failed on a worker (its lines are above)")
        status, _ = self.shell(tc.on_all_workers(self.pod, tc.start_script(self.pod)), check=False)
        return status

    def job_running(self) -> bool:
        status, _ = self.shell(
            tc.on_all_workers(self.pod, tc.running_script()), capture=True, check=False
        )
        return status == 0

    def done(self) -> bool:
        status, _ = self.shell(tc.done_marker(self.pod), capture=True, check=False)
        return status == 0

    def wait(self) -> str:
        """Poll a detached job until it is 'done', 'preempted' or has 'died'."""
        while True:
            self.shell.sleep(self.pod.poll_s)
            state = self.state()
            if state != "ACTIVE":
                return "preempted"
            if not self.job_running():
                return "done" if self.done() else "died"

    def finish(self) -> None:
        """Collect every worker's logs into the workdir; delete the slice unless --keep."""
        self.shell(tc.on_all_workers(self.pod, tc.collect_script(self.pod)), check=False)
        if self.pod.keep:
            self.log(
                "kept (--keep); delete it with: " + shlex.join(tc.delete_queued_resource(self.pod))
            )
        else:
            self.shell(tc.delete_queued_resource(self.pod))

    def run(self) -> int:
        """The whole launch (module docstring); 0 when the job finished or was left running."""
        restarts, first, status = 0, True, 0
        while True:
            self.ensure_slice()
            if first and self.pod.watch and self.pod.detach and self.job_running():
                # A launcher stopped while its job ran (the laptop closed): watch, do not restart.
                self.log("the job is already running on the slice: watching it")
            else:
                status = self.prepare_and_start()
            first = False
            if not self.pod.detach:  # attached: the job ran to its end inside the ssh session
                if status == 0:
                    self.finish()
                else:  # kept for a look; the logs are in the workdir
                    self.shell(
                        tc.on_all_workers(self.pod, tc.collect_script(self.pod)), check=False
                    )
                    self.log(f"job failed (exit status {status}): slice kept")
                return status
            if not self.pod.watch:
                self.log(f"started, detached; console: {tc.console_log(self.pod)} on each worker")
                return status
            outcome = self.wait()
            self.log(f"job {outcome}")
            if outcome == "done":
                self.finish()
                return 0
            if outcome == "died":
                self.shell(tc.on_all_workers(self.pod, tc.collect_script(self.pod)), check=False)
                restarts += 1
                if restarts > self.pod.max_restarts:
                    self.log(f"died {restarts} times (--max_restarts={self.pod.max_restarts})")
                    return 1


def define_flags() -> None:
    """The launcher's flags; called only when it runs as a program (see `ib_jax.contract.cli`)."""
    from absl import flags

    flags.DEFINE_string("name", None, "queued resource and TPU VM name", required=True)
    flags.DEFINE_string("zone", None, "GCP zone of the slice", required=True)
    flags.DEFINE_string("project", None, "GCP project (default: gcloud's)")
    flags.DEFINE_string("accelerator", "v5p-128", "v4-N, v5litepod-N (or v5e-N), v5p-N, v6e-N")
    flags.DEFINE_string("runtime_version", "", "TPU VM software version (default: per generation)")
    flags.DEFINE_bool("spot", False, "request Spot capacity (preemptible)")
    flags.DEFINE_bool("best_effort", False, "request best-effort capacity (gcloud alpha)")
    flags.DEFINE_bool("reserved", False, "use the project's reservation")
    flags.DEFINE_string("python", WORKER_PYTHON, "Python version uv installs on the workers")
    flags.DEFINE_enum("job", "train", JOBS, "which job every worker runs")
    flags.DEFINE_bool("watch", False, "relaunch until WORKDIR/TRAINING_DONE, then clean up")
    flags.DEFINE_bool("keep", False, "keep the slice when the job is done")
    flags.DEFINE_bool("detach", True, "run the job under setsid nohup (--nodetach: over ssh)")
    flags.DEFINE_bool("skip_install", False, "do not build the venv (the code is still copied)")
    flags.DEFINE_bool("preflight", True, "check devices, bucket and disk before the job")
    flags.DEFINE_float("min_disk_gb", 20.0, "preflight: free disk each worker needs")
    flags.DEFINE_float("poll_s", 60.0, "seconds between state checks")
    flags.DEFINE_integer(
        "max_restarts", 3, "--watch: relaunches of a job that died (not preempted)"
    )
    flags.DEFINE_string(
        "config", None, "configs/*.py[:arg], relative to the repository", required=True
    )
    flags.DEFINE_string("workdir", None, "shared by all workers: gs://bucket/path", required=True)
    flags.DEFINE_bool("dry_run", False, "print every command, run none")
    flags.DEFINE_alias("dry-run", "dry_run")


def main(argv: Sequence[str]) -> int:
    """Launch; `argv[1:]` (after `--`) go to the job."""
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
    if pod.spot + pod.best_effort + pod.reserved > 1:
        raise app.UsageError("--spot, --best_effort and --reserved exclude each other", exitcode=2)
    try:
        tc.parse_accelerator(pod.accelerator)
    except ValueError as error:
        raise app.UsageError(str(error), exitcode=2) from None
    try:
        return Launcher(pod, Shell(pod.dry_run)).run()
    except LaunchError as error:
        print(f"tpu_pod {pod.name}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
