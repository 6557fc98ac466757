r"""Before a job starts on a slice, on every worker: does this host see what the job needs?

    python -m launch.tpu_preflight --workdir=gs://BUCKET/run --devices_per_host=4 [--min_disk_gb=20]

launch/tpu_pod.py runs it on all workers at once (the device check joins the process group, so
every host must run it). Checks, one line per problem, exit status 3 when any fails:
  - devices: `jax.local_device_count()` equals the slice's chips per host (a worker whose TPU is
    held by a stale process, or a wrong accelerator type, sees fewer or none);
  - bucket: a file written to WORKDIR/launch_logs/ reads back the same and can be removed (a
    missing gcsfs, missing credentials or a bucket the VM's service account cannot write);
  - disk: free space under $HOME (the venv, compilation caches, logs).
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Sequence

import ml_collections
from absl import app, flags

from ib_jax import distributed
from ib_jax.contract import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "the job's workdir (gs://...)", required=True)
_DEVICES = flags.DEFINE_integer("devices_per_host", None, "JAX devices each host must see")
_MIN_DISK_GB = flags.DEFINE_float("min_disk_gb", 20.0, "free disk under $HOME, in GB")


def bucket_problem(workdir: str) -> str | None:
    """Write, read back and remove a file under `workdir`; None when all three work."""
    from etils import epath  # only here: gs:// support is what is being checked

    probe = epath.Path(workdir) / "launch_logs" / f"preflight-{socket.gethostname()}-{uuid.uuid4()}"
    text = f"preflight {uuid.uuid4()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(text)
        read = probe.read_text()
        probe.unlink()
    except Exception as error:  # ImportError (no gcsfs), OSError, auth errors: all one line
        return f"workdir {workdir}: cannot write and read back a file ({type(error).__name__}: {error})"
    if read != text:
        return f"workdir {workdir}: a file written there read back different"
    return None


def disk_problem(min_gb: float, path: str | None = None) -> str | None:
    """None when `path` (default $HOME) has at least `min_gb` GB free."""
    path = path or os.path.expanduser("~")
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < min_gb:
        return f"disk: {free_gb:.1f} GB free under {path}, need --min_disk_gb={min_gb:g}"
    return None


def device_problem(expected: int | None) -> tuple[str | None, str]:
    """(problem or None, a summary line) after joining the process group."""
    import jax

    distributed.initialize(ml_collections.ConfigDict())
    local, total = jax.local_device_count(), jax.device_count()
    summary = (
        f"process {jax.process_index()} of {jax.process_count()}: {local} local / {total} devices "
        f"({jax.devices()[0].device_kind})"
    )
    if expected is not None and local != expected:
        return f"devices: this host sees {local}, the slice has {expected} per host", summary
    return None, summary


def main(argv: Sequence[str]) -> int:
    """Run the checks; print one line per problem."""
    del argv
    host = socket.gethostname()
    problem, summary = device_problem(_DEVICES.value)
    found = [p for p in (problem, bucket_problem(_WORKDIR.value), disk_problem(_MIN_DISK_GB.value))]
    found = [p for p in found if p]
    for line in found:
        print(f"preflight {host}: {line}", flush=True)
    if found:
        return 3
    print(f"preflight {host}: ok ({summary}, workdir writable)", flush=True)
    return 0


if __name__ == "__main__":
    app.run(cli.guarded("preflight", main))
