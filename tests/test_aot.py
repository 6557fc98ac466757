"""launch/: the deviceless TPU compile planner (needs libtpu), topology names, the TPU pod dry run."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from launch import aot
from launch.aot_report import GiB

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_topology_names():
    v5p = aot.parse_topology("v5p-128")
    assert (v5p.spec, v5p.num_chips, v5p.chip.hbm_bytes) == ("v5p:4x4x4", 64, 95 * GiB)
    assert aot.parse_topology("v4-32").spec == "v4:2x2x4"  # v4/v5p names count TensorCores
    assert aot.parse_topology("v5e-64").spec == "v5e:8x8"  # v5e/v6e names count chips
    assert aot.parse_topology("v6e-256").num_chips == 256
    assert aot.parse_topology("v5p:2x2x2").num_chips == 8
    for bad in ("v5p-100", "v9-8", "tpu"):
        with pytest.raises(aot.PlannerError):
            aot.parse_topology(bad)


def test_released_configs_get_the_papers_batch_sizes():
    sizes = {
        name: aot.load_planned_config(f"configs/instructblip_{name}.py").data.global_batch_size
        for name in ("flant5xl", "flant5xxl", "vicuna7b", "vicuna13b")
    }
    assert sizes == {"flant5xl": 192, "flant5xxl": 64, "vicuna7b": 128, "vicuna13b": 64}
    config = aot.load_planned_config(
        "configs/instructblip_vicuna7b.py",
        batch_size=64,
        mesh="1,-1,4",
        grad_accum_steps=2,
        remat_policy="full",
    )
    assert (
        config.data.global_batch_size,
        dict(config.mesh.shape),
        config.train.grad_accum_steps,
        config.model.remat_policy,
    ) == (64, {"data": 1, "fsdp": -1, "tensor": 4}, 2, "full")
    assert aot.train_step_flops(config) > 0  # the Vicuna path has analytic FLOPs too


def test_advice_names_the_knobs_when_it_does_not_fit():
    plan = aot.Plan(
        config="c",
        topology="v5e-8",
        num_chips=8,
        num_devices=8,
        mesh=dict(data=8, fsdp=1, tensor=1),
        batch_size=64,
        grad_accum_steps=1,
        remat_policy="none",
        lengths={},
        hbm_per_device=16 * GiB,
        fits=False,
        compile_s=0,
        step_flops=1.0,
        mfu=0.4,
        step_time_s=1.0,
        memory=dict(
            arguments=20 * GiB,
            outputs=0,
            aliased=0,
            temporaries=4 * GiB,
            code=0,
            total=24 * GiB,
        ),
    )
    tips = " ".join(aot.advice(plan))
    assert (
        "--mesh=1,8,1" in tips and "--remat_policy=full" in tips and "--grad_accum_steps=2" in tips
    )
    assert "DOES NOT FIT" in aot.report(plan)


@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install libtpu of the version jax pins): "
    "no deviceless TPU compilation here",
)
def test_planner_compiles_tiny_for_a_tpu_topology():
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.aot",
            "--config=configs/tiny.py",
            "--topology=v5e-8",
            "--mesh=-1,2,1",
            "--json",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout.strip().splitlines()[-1])
    assert (
        plan["fits"]
        and plan["num_devices"] == 8
        and plan["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    )
    memory = plan["memory"]
    assert 0 < memory["arguments"] < 16 * GiB and memory["total"] >= memory["arguments"]
    assert memory["aliased"] > 0  # the donated train state is reused for the new one


def test_planner_without_libtpu_says_how_to_get_it():
    code = (
        "import importlib.util, sys; real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'libtpu' else real(name, *a)\n"
        "from absl import app; from launch import aot; aot.define_flags()\n"
        "app.run(aot.main, argv=['launch.aot', '--config=configs/tiny.py', '--topology=v5e-8'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "pip install" in done.stderr and "libtpu" in done.stderr, (
        done.stderr[-2000:]
    )
