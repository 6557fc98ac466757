"""Buckets through a real GCS protocol: gcp-storage-emulator on 127.0.0.1 (tests/fake_tools/
gcs_emulator.py), gcsfs (etils.epath) and TensorStore (Orbax) pointed at it. A tiny run with its
data root, initial checkpoint and workdir in the bucket trains, is stopped and resumes, and the
eval job evaluates it in watch mode; a missing gcsfs or a forbidden bucket ends in one line."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ib_jax.contract import cli
from launch.local import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "ib-test"
CONFIG = f"configs/tiny.py:root=gs://{BUCKET}/data"

# ib_jax.train with SIGTERM sent to itself right after the async save of step 3 has started (as
# in tests/test_faults.py): the job finishes that save, saves the next step and exits 0.
TERM_AFTER_SAVE_3 = r"""
import os, runpy, signal, sys
from ib_jax import checkpoint
save = checkpoint.save
def save_then_term(manager, step, *args, **kwargs):
    started = save(manager, step, *args, **kwargs)
    if step == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return started
checkpoint.save = save_then_term
sys.argv[0] = "ib_jax.train"
runpy.run_module("ib_jax.train", run_name="__main__", alter_sys=True)
"""


def _wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the GCS emulator did not listen on {port}")


@pytest.fixture(scope="module")
def gcs_env():
    """The environment that points gcsfs and TensorStore at a fresh emulator."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "fake_tools", "gcs_emulator.py"), str(port),
         BUCKET],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        yield dict(
            os.environ,
            STORAGE_EMULATOR_HOST=url,  # gcsfs (anonymous against an emulator)
            TENSORSTORE_GCS_HTTP_URL=url,  # TensorStore, i.e. Orbax's array reads and writes
            CLOUD_STORAGE_EMULATOR_ENDPOINT=url,  # google-cloud-cpp in array_record (TFDS data)
            GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",  # TensorStore's credentials
            # gcsfs asks a gRPC endpoint whether the bucket is hierarchical; the emulator has
            # none and each ask retries for about a minute.
            GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
            JAX_PLATFORMS="cpu",
            JAX_NUM_CPU_DEVICES="1",
        )
    finally:
        server.terminate()
        server.wait(10)


def _run(env, *args, module="ib_jax.train", code=None, timeout=900):
    command = [sys.executable] + (["-c", code] if code else ["-m", module]) + list(args)
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _in_bucket(env, code: str):
    """Run `code` (with `epath` imported) against the emulator; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", "from etils import epath\n" + code],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_missing_gcsfs_ends_in_one_line(tmp_path):
    # A gcsfs that cannot be imported, as on an install without the `gcs` extra.
    (tmp_path / "gcsfs.py").write_text("raise ModuleNotFoundError(\"No module named 'gcsfs'\")\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", JAX_PLATFORMS="cpu")
    done = _run(env, "--config=configs/tiny.py", "--workdir=gs://bucket/run", timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "--workdir='gs://bucket/run' is not writable" in done.stderr
    assert "install gcsfs" in done.stderr


def test_a_missing_filesystem_package_mid_run_is_exit_3():
    error = ImportError("Please install gcsfs to access Google Storage")
    assert cli.failure_class(error) == (3, "missing filesystem package")
    assert cli.failure_class(ImportError("cannot import name 'x' from 'y'"))[0] == 1


def test_a_forbidden_bucket_ends_in_one_line(gcs_env):
    done = _run(gcs_env, "--config=configs/tiny.py", "--workdir=gs://forbidden-b/run", timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "--workdir='gs://forbidden-b/run' is not writable: Forbidden" in done.stderr


# Writes the same media locally and in the bucket, then reads both through the data layer.
MEDIA = r"""
import os, sys
import av, numpy as np
from etils import epath
from PIL import Image
from data_pipelines import images, sources
local, bucket, tfds_dir = sys.argv[1:4]

def upload(source, target):
    for d, _, names in os.walk(source):
        for n in names:
            path = os.path.join(d, n)
            t = epath.Path(target) / os.path.relpath(path, source)
            t.parent.mkdir(parents=True, exist_ok=True)
            t.write_bytes(open(path, "rb").read())

os.makedirs(os.path.join(local, "frames"))
colors = [(40 * i, 255 - 40 * i, 100) for i in range(6)]
for i, color in enumerate(colors):
    Image.new("RGB", (32, 32), color).save(os.path.join(local, "frames", f"{i:02d}.png"))
with av.open(os.path.join(local, "clip.mp4"), "w") as out:
    stream = out.add_stream("mpeg4", rate=6)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for color in colors:
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), color, np.uint8), format="rgb24")
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
upload(local, bucket)
upload(tfds_dir, bucket + "/tfds")
for name in ("frames", "clip.mp4"):
    ours = images.load_clip_frames(os.path.join(local, name), 3)
    theirs = images.load_clip_frames(bucket + "/" + name, 3)
    assert [np.asarray(f).tolist() for f in ours] == [np.asarray(f).tolist() for f in theirs], name
entry = {"name": "demo_vqa", "split": "train"}
ours = sources.load_records(dict(entry, tfds=os.path.join(tfds_dir, "demo_vqa", "train")))
theirs = sources.load_records(dict(entry, tfds=bucket + "/tfds/demo_vqa/train"))
assert len(ours) == len(theirs) > 0
assert [(ours[i]["id"], ours[i]["image_bytes"]) for i in range(3)] == [
    (theirs[i]["id"], theirs[i]["image_bytes"]) for i in range(3)]
print("same records and frames from the bucket")
"""


def test_tfds_data_videos_and_frames_read_from_the_bucket(gcs_env, tmp_path):
    tfds_dir = str(tmp_path / "tfds")
    prepared = _run(
        dict(os.environ, JAX_PLATFORMS="cpu"),
        f"--config=configs/tiny.py:root={tmp_path / 'demo'}", f"--out={tfds_dir}",
        module="data_pipelines.prepare", timeout=300,
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    done = _run(gcs_env, str(tmp_path / "media"), f"gs://{BUCKET}/media", tfds_dir, code=MEDIA)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same records and frames from the bucket" in done.stdout


@pytest.mark.slow
def test_train_stop_resume_and_watch_evaluate_all_in_the_bucket(gcs_env, tmp_path):
    from configs import tiny
    from tests.test_eval_sharded import save_converted

    # The initial checkpoint: written here as ib_jax.convert writes one, then copied up.
    local = save_converted(tiny.get_config(), str(tmp_path / "init"))
    _in_bucket(
        gcs_env,
        f"import os\nfor d, _, names in os.walk({local!r}):\n"
        "  for n in names:\n"
        f"    t = epath.Path('gs://{BUCKET}/init') / os.path.relpath(os.path.join(d, n), {local!r})\n"
        "    t.parent.mkdir(parents=True, exist_ok=True)\n"
        "    t.write_bytes(open(os.path.join(d, n), 'rb').read())\n",
    )
    workdir = f"gs://{BUCKET}/runs/tiny"
    flags = [f"--config={CONFIG}", f"--config.init.pretrained=gs://{BUCKET}/init",
             f"--workdir={workdir}"]  # fmt: skip

    stopped = _run(gcs_env, *flags, code=TERM_AFTER_SAVE_3)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "SIGTERM received: saving a checkpoint and stopping" in stopped.stderr
    listing = json.loads(
        _in_bucket(
            gcs_env,
            f"import json; w = epath.Path({workdir!r})\n"
            "print(json.dumps({'done': (w / 'TRAINING_DONE').exists(), 'steps': sorted("
            "p.name for p in (w / 'checkpoints').iterdir()), 'data': (epath.Path("
            f"'gs://{BUCKET}/data') / 'manifest.json').exists()}}))",
        )
    )
    # The demo data was rendered into the bucket; nothing was written under this checkout.
    assert listing["data"] and not os.path.exists(os.path.join(REPO, "gs:"))
    assert not listing["done"] and "3" in listing["steps"] and "6" not in listing["steps"]

    resumed = _run(gcs_env, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in resumed.stderr.lower()
    rows = _in_bucket(gcs_env, f"print((epath.Path({workdir!r}) / 'metrics.jsonl').read_text())")
    steps = [json.loads(line)["step"] for line in rows.splitlines() if '"loss"' in line]
    assert steps == list(range(1, 7)), steps  # once each: stopped after 4, resumed at 5

    evaluated = _run(gcs_env, f"--config={CONFIG}", f"--workdir={workdir}", "--watch",
                     module="ib_jax.evaluate")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "step_6 demo_vqa" in evaluated.stderr
    assert "Traceback" not in evaluated.stderr
