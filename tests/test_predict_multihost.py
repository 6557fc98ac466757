"""`python -m ib_jax.predict` across hosts: 2 processes x 2 CPU devices, each predicting its share
of the rows, must write the one output file this process writes alone on its 8 devices (every
row once, in input order, errors included)."""

import json
import os

import pytest

from ib_jax.predict import Decoding, job
from launch import local
from tests.test_predict import write_checkpoint, write_scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_two_processes_write_the_single_process_file(tmp_path):
    checkpoint = write_checkpoint(str(tmp_path / "tiny"))
    write_scenes(tmp_path)
    # 7 rows: the processes' shards differ in size and the last batch is padded.
    rows = (tmp_path / "rows.jsonl").read_text().splitlines()
    (tmp_path / "rows.jsonl").write_text("\n".join(rows + rows[:2]) + "\n")
    flags = [
        f"--checkpoint={checkpoint}",
        f"--input={tmp_path / 'rows.jsonl'}",
        "--batch_size=4",
        "--num_beams=2",
        "--max_new_tokens=4",
    ]
    out = tmp_path / "two.jsonl"
    local.launch(
        ["-m", "ib_jax.predict", *flags, f"--out={out}"],
        num_processes=2,
        devices_per_process=2,
        timeout_s=600,
        log_dir=str(tmp_path / "logs"),
        env={"PYTHONPATH": REPO},
    )
    alone = tmp_path / "one.jsonl"
    decoding = Decoding(num_beams=2, max_new_tokens=4)
    job.run(
        checkpoint,
        str(tmp_path / "rows.jsonl"),
        str(alone),
        decoding=decoding,
        batch_size=8,
        progress=False,
    )
    two = [json.loads(line) for line in out.read_text().splitlines()]
    one = [json.loads(line) for line in alone.read_text().splitlines()]
    assert [r["id"] for r in two] == [str(i) for i in range(7)]
    assert two == one
    assert sum(1 for r in two if r.get("error")) == 3  # missing.png twice, broken.png
