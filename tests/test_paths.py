"""Bucket workdirs: every file the training job writes or lists outside Orbax's arrays goes through
etils.epath, tested on a fake `gs://` bucket held in memory (no network, no gcsfs).

etils.epath serves gs:// with fsspec's "gs"/"gcs" implementation when TensorFlow is absent; the
fixture registers an in-memory filesystem under those names that, like GCS, cannot append to an
object. Orbax's array data on gs:// goes through TensorStore's own GCS driver, which needs the
network, so checkpoints' arrays are not written here: the step directories are laid out by hand.
"""

import os
import struct

import fsspec
import pytest
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from ib_jax import checkpoint, validate
from ib_jax.train.metrics_writer import MetricsWriter


class FakeBucket(MemoryFileSystem):
    """gs://bucket/key objects in memory; no append (GCS objects are written whole)."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        path = path.rstrip("/")
        return "/" + path.lstrip("/") if path else ""

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError("a bucket object cannot be appended to")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def bucket():
    """A fresh fake bucket; yields the run's workdir URL on it."""
    for name in FakeBucket.protocol:
        fsspec.register_implementation(name, FakeBucket, clobber=True)
    FakeBucket.store.clear()
    FakeBucket.pseudo_dirs[:] = [""]
    yield "gs://fake-bucket/runs/demo"
    FakeBucket.store.clear()


def _step(workdir, name, committed=True):
    path = epath.Path(workdir) / "checkpoints" / name
    for item in checkpoint.ITEMS:
        (path / item).mkdir(parents=True, exist_ok=True)
        (path / item / "_METADATA").write_text("{}")
        (path / item / "manifest.ocdbt").write_text("")
    if committed:
        (path / checkpoint.COMMIT_MARKER).write_text("done")


def test_checkpoint_listing_and_markers_on_a_bucket(bucket):
    assert checkpoint.finalized_steps(bucket) == []
    assert checkpoint.checkpoint_dir(bucket) == f"{bucket}/checkpoints"
    _step(bucket, "100")
    _step(bucket, "200")
    _step(bucket, "300", committed=False)  # a save in progress (or interrupted): no marker yet
    _step(bucket, "250.orbax-checkpoint-tmp-1700000000")
    assert checkpoint.finalized_steps(bucket) == [100, 200]
    assert checkpoint.check_step(bucket, 200) is None
    assert "no commit_success.txt" in checkpoint.check_step(bucket, 300)
    (epath.Path(bucket) / "checkpoints" / "200" / "params" / "_METADATA").unlink()
    assert checkpoint.check_step(bucket, 200) == "params/_METADATA is missing"
    assert checkpoint.check_step(bucket, 200, items=("config",)) is None

    moved = checkpoint.move_aside(bucket, 200)
    assert moved.startswith(f"{bucket}/checkpoints/200{checkpoint.UNREADABLE_TAG}")
    assert epath.Path(moved).is_dir()
    assert checkpoint.finalized_steps(bucket) == [100]

    assert not checkpoint.training_done(bucket)
    checkpoint.mark_training_done(bucket)
    assert checkpoint.training_done(bucket)
    # All of it is in the bucket, nothing on the local disk.
    assert f"/fake-bucket/runs/demo/{checkpoint.FINAL_MARKER}" in FakeBucket.store
    assert not os.path.exists("gs:") and not os.path.exists("/fake-bucket")


def _scalars(data: bytes) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from TFRecord-framed TensorBoard events."""
    from tensorboardX.proto import event_pb2

    scalars, offset = {}, 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _metrics(loss):
    return dict(loss=loss, learning_rate=1e-3, grad_norm=1.0, examples_per_s=10.0)


@pytest.mark.parametrize("where", ["bucket", "local"])
def test_metrics_jsonl_and_tensorboard_on_a_bucket_and_locally(where, bucket, tmp_path):
    import json

    workdir = bucket if where == "bucket" else str(tmp_path / "run")
    writer = MetricsWriter(workdir, total_steps=4)
    writer.write(1, _metrics(2.0))
    writer.write(2, _metrics(1.5))
    writer.close()
    # A resumed run (a new writer) adds its lines after the earlier ones.
    writer = MetricsWriter(workdir, total_steps=4, start_step=2)
    writer.write(3, _metrics(1.25))
    writer.close()

    root = epath.Path(workdir)
    lines = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["loss"]) for row in lines] == [(1, 2.0), (2, 1.5), (3, 1.25)]
    events = sorted((root / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per writer, as tensorboardX names them
    losses = [pair for path in events for pair in _scalars(path.read_bytes())["train/loss"]]
    assert sorted(losses) == [(1, 2.0), (2, 1.5), (3, 1.25)]
    if where == "bucket":
        assert any(key.endswith("/metrics.jsonl") for key in FakeBucket.store)


def test_workdir_check_writes_through_the_bucket(bucket):
    assert validate._workdir(bucket) == []
    assert not [key for key in FakeBucket.store if ".write_probe_" in key]  # cleaned up
    assert "is not writable" in validate._workdir("/proc/no_such_dir/run")[0]
