"""The benchmarks run end to end at tiny sizes, and both sides compute the same thing.

Nothing is asserted about speed: timings on a shared 2-core machine are not reproducible. What is
asserted: every measurement exists and is a finite positive number, the two implementations agree
on shared weights (loss, generated tokens, ranking scores), and the benchmark's own reference
builder (benchmarks/reference.py) produces the architecture it was given.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import common, reference, run, run_report
from ib_jax.contract.model import LlamaConfig
from ib_jax.convert.hf_config import model_config_from_hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.reference


def _arch(config):
    return (config.vision, config.qformer, config.text, config.num_query_tokens)


def test_reference_builder_round_trips_the_architecture():
    t5 = run.model_config(run.tiny())
    llama = dataclasses.replace(
        t5,
        text=LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            max_position_embeddings=128,
            pad_token_id=95,
        ),
    )
    for config in (t5, run.model_config(run.BenchConfig()), llama):
        back = model_config_from_hf(reference.hf_config(config).to_dict())
        assert _arch(back) == _arch(config)
    # The placeholder never collides with pad, and every benchmark token id stays below it.
    assert reference.image_token(llama) == 94
    batch = common.make_batch(
        4, 28, 6, 7, 5, qformer_vocab=100, max_token=reference.image_token(t5), seed=0
    )
    assert batch["input_ids"].max() < reference.image_token(t5)


def test_fan_in_init_keeps_activations_at_unit_scale():
    config = run.model_config(run.tiny())
    model = reference.build(config, seed=0)
    params = dict(model.named_parameters())
    fc1 = params["vision_model.encoder.layers.0.mlp.fc1.weight"]  # [out, in]
    assert abs(fc1.std().item() * math.sqrt(fc1.shape[1]) - 1.0) < 0.1
    q = params["language_model.encoder.block.0.layer.0.SelfAttention.q.weight"]
    expected = 1.0 / math.sqrt(q.shape[1] * config.text.d_kv)  # T5 folds 1/sqrt(d_kv) into q
    assert abs(q.std().item() / expected - 1.0) < 0.1
    norm = params["vision_model.post_layernorm.weight"]
    assert abs(norm.mean().item() - 1.0) < 0.1
    # Untied head: its own tensor, not the embedding table.
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() != lm.get_input_embeddings().weight.data_ptr()


def test_cpu_suite_runs_end_to_end_and_both_sides_agree():
    # One timed run per measurement, one variant per extra section: compiles dominate.
    # `python -m benchmarks.run --tiny` runs every variant.
    config = dataclasses.replace(
        run.tiny(),
        compile_layers=(2,),
        compile_scan=(True,),
        memory_remat=("none",),
        warmup=0,
        repeats=1,
        pipeline_batches=1,
    )
    results = run.run(config, sections=("compile", "memory", "pipeline"), log=lambda _: None)
    text = run_report.table(results)
    for row in (
        "training step",
        "forward + loss",
        "greedy",
        "beams",
        "MFU",
        "compiled / analytic FLOPs",
        "input pipeline",
        "both sides agree: forward loss",
        "both sides agree: generated tokens",
        "remat=none",
        "2 layers, scan=on",
    ):
        assert row in text, row
    for side in ("reference", "ours"):
        for key in ("train_step", "forward", "greedy", "beam"):
            assert results[side][key]["median_s"] > 0
    agreement = results["agreement"]
    assert agreement["loss_relative_difference"] <= run_report.LOSS_TOLERANCE, agreement
    assert min(agreement["tokens_equal"].values()) >= run_report.TOKENS_TOLERANCE, agreement
    assert results["reference"]["trainable_params"] == results["ours"]["trainable_params"]


def _numbers(tree, prefix=""):
    """(path, value) of every number in a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{prefix}/{k}")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, tree


def test_accelerator_benchmark_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "benchmarks.accelerator", "--model=tiny", "--steps=2"]
    command += ["--calls=1", f"--out={out}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["model"] == "tiny" and res["ours"]["platform"] == "cpu"
    ours, ref = res["ours"], res["reference"]
    assert ref["available"], ref
    measured = ("train", "generate_qa", "generate_captions", "ranking")
    for side in (ours, ref):
        assert not side["skipped"], side["skipped"]
        for key in measured:
            # (the planner's numbers are checked below; XLA may report 0 aliased/temp bytes)
            skip = ("planner", "compiled_memory")
            values = dict(_numbers({k: v for k, v in side[key].items() if k not in skip}))
            assert values, key
            bad = {p: v for p, v in values.items() if not common.is_positive_number(v)}
            # Settings such as length_penalty=-1 are echoed with the results; the rest is measured.
            bad.pop("/length_penalty", None)
            assert not bad, (key, bad)
        for key in ("step_time_s", "examples_per_s", "mfu", "peak_memory_bytes"):
            assert common.is_positive_number(side["train"][key]), key
    planner = ours["train"]["planner"]
    assert common.is_positive_number(planner["analytic_flops"])
    assert common.is_positive_number(planner["memory_bytes"])
    # The planner's FLOPs are the ones the MFU is computed from (same config, same batch).
    assert planner["analytic_flops"] == ours["train"]["analytic_flops"]
    for key in measured:
        assert common.is_positive_number(res["ratios"][key]), key
    # Both sides agree on shared fp32 weights.
    agree = res["agreement"]
    assert agree["agree"], agree
    assert agree["loss_relative_difference"] <= 1e-5
    for key in ("generate_qa_tokens_equal", "generate_captions_tokens_equal", "ranking_best_equal"):
        assert agree[key] >= 0.99, (key, agree[key])
    assert agree["ranking_scores_relative_difference"] <= 1e-5
    assert ours["train"]["trainable_parameters"] == ref["train"]["trainable_parameters"]
    # The generated tokens are the requested lengths, and the table reports every row.
    tokens = np.asarray(ours["agreement_outputs"]["generate_captions"])
    assert tokens.shape[1] == ours["generate_captions"]["max_new_tokens"]
    for row in ("training step", "MFU", "peak memory", "generate short answers", "captions"):
        assert row in res["table"], row
    assert "launch.aot (planner) vs measured" in res["table"]
    assert "both sides agree" in res["table"]
    assert res["table"] in done.stdout
