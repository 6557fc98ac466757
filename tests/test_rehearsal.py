"""The paper's recipe end to end on the miniature of its 26 datasets, in their published layouts.

Real configs (configs/rehearsal.py = data_heldin's 13-source mixture + eval_heldout's 13 held-out
datasets under one root, with a tiny model) through the real entry points as subprocesses:
`python -m data_pipelines.check`, `python -m ib_jax.train`, `python -m ib_jax.evaluate`, on an
8-device CPU mesh. Compiled programs are shared through the persistent cache (tests/conftest.py).

When the evaluation protocol moved from the data registry into the run config (`config.evals`,
issue 21), the held-out run below gave the same metrics on all 13 datasets and the same
prediction files (paths aside) before (cf95f8c) and after (5caed83) the move.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from configs import evals
from data_pipelines import check, layouts, registry, sources
from data_pipelines.miniature import CORRUPTED, counts, write_miniature
from ib_jax import configs_util

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELD_OUT = registry.held_out()
# Metrics in [0, 1], except CIDEr-D (0 to 10).
UPPER = {"cider": 10.0}


def _run(module, *args, timeout=600):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _examples_on_unreadable_files(root, manifest, name):
    """How many eval examples read one of the files the miniature broke on purpose."""
    split = counts.manifest_split(name, "eval")
    broken = {
        os.path.join(root, u["path"])
        for u in manifest["corrupted"].get(name, {}).get("unreadable", [])
        if u["split"] == split
    }
    records = sources.load_records(layouts.entry(name, "eval", root), max_bad_fraction=1.0)
    return sum(bool(broken & set(check.media_paths(r))) for r in records)


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("miniature"))
    return root, write_miniature(root, seed=0)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("miniature_corrupt"))
    return root, write_miniature(root, seed=0, corrupt=True)


def test_check_reports_all_26_clean_and_the_corrupt_faults(clean, corrupt, tmp_path):
    root, _ = clean
    out = str(tmp_path / "clean.json")
    proc = _run(
        "data_pipelines.check",
        f"--config=configs/rehearsal.py:root={root}",
        "--sample=-1",
        f"--json={out}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.load(open(out))
    names = {n for n in registry.names() if not n.startswith("demo")}
    assert len(rows) == 26 and {r["name"] for r in rows} == names
    assert all(r["status"] == "ok" and r["examples"] > 0 for r in rows), rows
    assert len([line for line in proc.stdout.splitlines() if line.endswith(" ok")]) == 26

    # The corrupt miniature, in process (the entry point was run above): the faults are counted.
    root, manifest = corrupt
    data = configs_util.load_config(f"configs/rehearsal.py:root={root}").data
    faulty = set(CORRUPTED) | {"vqav2_qg"}  # the question-generation variant shares VQAv2's files
    for max_bad, verdict in ((0.001, "STOP"), (0.5, "faults")):
        data.max_bad_fraction = max_bad
        for row in check.check_config(data, sample=-1):
            split = "train" if row.split == "train" else "eval"
            unreadable, malformed = counts.expected_faults(manifest, row.name, split)
            assert (row.unreadable, row.malformed) == (unreadable, malformed), row
            assert row.examples == counts.expected_records(manifest, row.name, split)
            faults = row.name in faulty and (unreadable or malformed)
            assert row.status == (verdict if faults else "ok"), row


def test_heldin_mixture_trains_and_the_heldout_suite_evaluates(corrupt, tmp_path):
    """On the corrupt miniature, with a bound that tolerates its faults: the 13 held-in sources
    train, all 13 held-out datasets produce their metric over every example, and the broken
    files are counted, not fatal."""
    root, manifest = corrupt
    workdir = str(tmp_path / "run")
    config = [
        f"--config=configs/rehearsal.py:root={root},steps=2",
        "--config.data.max_bad_fraction=0.5",
        f"--workdir={workdir}",
    ]
    proc = _run("ib_jax.train", *config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [s["step"] for s in steps] == [1, 2] and all(math.isfinite(s["loss"]) for s in steps)
    log = open(os.path.join(workdir, "logs", "train.log")).read()
    for name in registry.held_in():
        assert f"dataset {name}: " in log  # every source of the mixture was loaded and weighted

    proc = _run("ib_jax.evaluate", *config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {
        line["dataset"]: line for line in _jsonl(os.path.join(workdir, "eval", "metrics.jsonl"))
    }
    # VizWiz's local score is its val split's, reported as vizwiz_val (configs/evals.py).
    assert set(lines) == {evals.REPORTED_AS.get(name, name) for name in HELD_OUT}
    for name in HELD_OUT:
        line, metric = lines[evals.REPORTED_AS.get(name, name)], evals.PROTOCOL[name]["metric"]
        assert math.isfinite(line[metric]) and 0.0 <= line[metric] <= UPPER.get(metric, 1.0), line
        assert line["num_examples"] == counts.expected_records(manifest, name, "eval"), line
        assert line["missing_images"] == _examples_on_unreadable_files(root, manifest, name), line
    assert {n for n, line in lines.items() if line["missing_images"]} == {
        "scienceqa",
        "msvd_qa",
        "hateful_memes",
    }


def test_scienceqa_finetune_and_a_failing_dataset_is_isolated(clean, tmp_path):
    """Finetuning on ScienceQA-IMG alone, then evaluating it next to a dataset whose annotation
    file is missing: ScienceQA gets its metric, the other is reported as failed (exit 1)."""
    root, manifest = clean
    workdir = str(tmp_path / "finetune")
    missing = os.path.join(root, "vizwiz", "no_such_file.json")
    config = [
        f"--config=configs/rehearsal.py:root={root},steps=2,train=scienceqa,"
        f"datasets=scienceqa+vizwiz,vizwiz.ann_path={missing}",
        f"--workdir={workdir}",
    ]
    proc = _run("ib_jax.train", *config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = open(os.path.join(workdir, "logs", "train.log")).read()
    assert "dataset scienceqa: 3 examples, mixture weight 1.0000" in log

    proc = _run("ib_jax.evaluate", *config)
    assert proc.returncode == 1
    assert "evaluation failed for: vizwiz" in proc.stderr and "no_such_file.json" in proc.stderr
    lines = {
        line["dataset"]: line for line in _jsonl(os.path.join(workdir, "eval", "metrics.jsonl"))
    }
    failed = lines["vizwiz_val"]  # VizWiz's local (val) score's name
    assert failed["failed"] and "no_such_file.json" in failed["error"]
    science = lines["scienceqa"]
    assert 0.0 <= science["accuracy"] <= 1.0 and science["missing_images"] == 0
    assert science["num_examples"] == counts.expected_records(manifest, "scienceqa", "eval")
