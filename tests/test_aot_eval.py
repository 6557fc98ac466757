"""launch.aot --mode=eval: the eval job's generation/ranking step compiled for a TPU slice."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from launch import aot, aot_eval, aot_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(**overrides) -> aot_report.Plan:
    values = dict(
        config="configs/instructblip_vicuna13b.py",
        topology="v5e-4",
        num_chips=4,
        num_devices=4,
        mesh=dict(data=4, fsdp=1, tensor=1),
        batch_size=64,
        grad_accum_steps=1,
        remat_policy="none",
        lengths={},
        hbm_per_device=16 * aot_report.GiB,
        fits=False,
        compile_s=0,
        step_flops=0.0,
        mfu=0.0,
        step_time_s=0.0,
        mode="eval",
        setting="captions, float32 parameters, float32 compute",
    )
    values.update(overrides)
    return aot_report.Plan(**values)


def test_eval_advice_and_report_name_the_knobs():
    plan = _plan()
    tips = " ".join(aot_eval.eval_advice(plan, "float32"))
    assert "--eval_dtype=bfloat16" in tips and "--mesh=1,4,1" in tips and "--batch_size=32" in tips
    text = aot.report(plan)
    assert "eval step (captions" in text and "DOES NOT FIT" in text and "PFLOP" not in text
    row = aot_report.table_row(plan)
    assert row.startswith("| vicuna13b | v5e-4 | 4,1,1 | 64 | captions") and "| no |" in row


def test_eval_config_takes_the_flags():
    config = aot_eval.eval_config(
        "configs/instructblip_flant5xxl.py", mesh="1,-1,1", batch_size=32, eval_dtype="bfloat16"
    )
    assert dict(config.mesh.shape) == {"data": 1, "fsdp": -1, "tensor": 1}
    assert (config.eval.batch_size, config.eval.dtype, config.eval.param_dtype) == (
        32,
        "bfloat16",
        "bfloat16",
    )
    assert aot_eval.eval_config("configs/tiny.py").eval.batch_size == 8  # the config's own


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install libtpu of the version jax pins): "
    "no deviceless TPU compilation here",
)
@pytest.mark.parametrize("setting", ["qa", "rank100"])
def test_planner_compiles_the_eval_step_for_a_tpu_topology(setting):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
    )
    command = [sys.executable, "-m", "launch.aot", "--mode=eval", "--config=configs/tiny.py"]
    command += ["--topology=v5e-8", "--mesh=1,4,2", f"--setting={setting}", "--json"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    assert plan["fits"] and plan["mode"] == "eval" and plan["setting"].startswith(setting)
    assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2} and plan["batch_size"] == 8
    memory = plan["memory"]
    assert 0 < memory["arguments"] < aot_report.GiB and memory["total"] >= memory["arguments"]
