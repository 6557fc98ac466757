"""The benchmark suite runs end to end on a tiny configuration (nothing is asserted about speed)."""

import dataclasses

from benchmarks import run


def test_benchmark_runs_end_to_end_on_a_tiny_config():
    # Compiles dominate: one per section beyond the measured programs, one timed run each. 23 s with the
    # tests' persistent compilation cache warm, ~95 s cold on the loaded 2-core machine (load 12).
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
    text = run.table(results)
    for row in (
        "training step",
        "forward + loss",
        "greedy",
        "beams",
        "MFU",
        "compiled / analytic FLOPs",
        "input pipeline",
        "remat=none",
        "2 layers, scan=on",
    ):
        assert row in text, row
    for side in ("reference", "ours"):
        for key in ("train_step", "forward", "greedy", "beam"):
            assert results[side][key]["median_s"] > 0
    assert (
        abs(results["reference"]["forward_loss"] - results["ours"]["forward_loss"]) < 1e-3
    )  # same weights
    assert (
        results["reference"]["trainable_params"] == results["ours"]["trainable_params"]
    )  # same trainable set
