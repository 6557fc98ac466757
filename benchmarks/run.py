"""ib_jax against the PyTorch reference (HF transformers InstructBLIP, CPU): one markdown table.

  python -m benchmarks.run                  # the benchmark configuration (about 10 minutes on 2 cores)
  python -m benchmarks.run --tiny           # seconds; what tests/test_benchmarks.py runs
  python -m benchmarks.run --threads=1 --json=/tmp/bench.json --markdown=/tmp/bench.md
  python -m benchmarks.run --skip=compile,memory,pipeline   # the side-by-side rows only

Same model, same weights, same batch, same threads, fp32:
- the HF model is built from our ModelConfig by benchmarks/reference.py (dropout 0, untied head),
  initialised the way trained models look (every matrix N(0, 1/fan_in)), and saved with
  `save_pretrained`; ours is `ib_jax.load_pretrained` of that directory. The table's last rows
  check that both sides compute the same thing: forward losses within 1e-5 relative, generated
  tokens >= 99% equal.
- threads: the process is pinned to N cores (`os.sched_setaffinity`), torch runs
  `torch.set_num_threads(N)`, and XLA gets `--xla_cpu_multi_thread_eigen=<N > 1>
  intra_op_parallelism_threads=N` in XLA_FLAGS before its CPU client starts (XLA's intra-op pool
  is sized from the affinity mask, so pinning is what actually bounds it).
- every timing is the median of `--repeats` runs after warm-up, the two sides timed in
  alternation (ref, ours, ref, ...) so that both see the same background load; jax results are
  blocked on.

Rows: training step (frozen ViT and LM, AdamW on the Q-Former, query tokens, projection and
ln_vision on both sides), forward with loss, greedy and 5-beam generation of exactly 20 new tokens
(min_new_tokens = max_new_tokens), MFU against a measured XLA fp32 matmul peak, compiled vs
analytic FLOPs, input-pipeline throughput, compile time vs depth with and without scan, and the
compiled step's memory with and without remat. On an accelerator: benchmarks/accelerator.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import app, flags

import ib_jax
from benchmarks import common, reference, run_lora, run_report, run_sections
from ib_jax import sharding
from ib_jax.contract.model import ModelConfig, QFormerConfig, T5Config, VisionConfig
from ib_jax.train import flops
from ib_jax.train.state import TrainState, split_params

SECTIONS = ("compile", "memory", "pipeline", "lora")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Sizes of the CPU benchmark model and batch, and how much to measure."""

    vision_width: int = 256
    vision_layers: int = 4
    image_size: int = 224
    patch_size: int = 14
    qformer_width: int = 256
    qformer_layers: int = 4
    cross_attention_frequency: int = 2
    num_query_tokens: int = 32
    qformer_vocab: int = 30523
    t5_width: int = 256
    t5_layers: int = 4  # encoder layers = decoder layers
    t5_heads: int = 4
    t5_d_kv: int = 64
    t5_d_ff: int = 1024
    vocab_size: int = 32128
    batch: int = 8
    instruction_len: int = 24  # LM instruction tokens and Q-Former instruction tokens
    target_len: int = 12
    new_tokens: int = 20
    num_beams: int = 5
    warmup: int = 2
    repeats: int = 7
    matmul_size: int = 2048
    compile_layers: tuple[int, ...] = (12, 48)  # LM layers (half encoder, half decoder)
    compile_width: int = 32
    compile_scan: tuple[bool, ...] = (False, True)
    memory_remat: tuple[str, ...] = ("none", "dots_no_batch", "full")
    pipeline_images: int = 64
    pipeline_batches: int = 10


def tiny() -> BenchConfig:
    """Small enough that the whole suite runs in well under a minute (tests)."""
    return BenchConfig(
        vision_width=32,
        vision_layers=1,
        image_size=56,
        qformer_width=32,
        qformer_layers=2,
        num_query_tokens=4,
        qformer_vocab=128,
        t5_width=32,
        t5_layers=1,
        t5_heads=4,
        t5_d_kv=8,
        t5_d_ff=64,
        vocab_size=256,
        batch=2,
        instruction_len=6,
        target_len=4,
        new_tokens=4,
        num_beams=2,
        warmup=1,
        repeats=2,
        matmul_size=128,
        compile_layers=(2, 4),
        compile_width=16,
        memory_remat=("none", "full"),
        pipeline_images=8,
        pipeline_batches=2,
    )


def model_config(bc: BenchConfig):
    """The benchmark architecture as our ModelConfig (FlanT5-style LM: gated GELU, untied head)."""
    return ModelConfig(
        vision=VisionConfig(
            hidden_size=bc.vision_width,
            intermediate_size=4 * bc.vision_width,
            num_layers=bc.vision_layers,
            num_heads=max(1, bc.vision_width // 64),
            image_size=bc.image_size,
            patch_size=bc.patch_size,
        ),
        qformer=QFormerConfig(
            vocab_size=bc.qformer_vocab,
            hidden_size=bc.qformer_width,
            intermediate_size=4 * bc.qformer_width,
            num_layers=bc.qformer_layers,
            num_heads=max(1, bc.qformer_width // 64),
            cross_attention_frequency=bc.cross_attention_frequency,
            encoder_hidden_size=bc.vision_width,
        ),
        text=T5Config(
            vocab_size=bc.vocab_size,
            d_model=bc.t5_width,
            d_kv=bc.t5_d_kv,
            d_ff=bc.t5_d_ff,
            num_layers=bc.t5_layers,
            num_decoder_layers=bc.t5_layers,
            num_heads=bc.t5_heads,
            dense_act_fn="gelu_new",
        ),
        num_query_tokens=bc.num_query_tokens,
    )


def make_batch(bc: BenchConfig) -> dict[str, np.ndarray]:
    """Our batch (no image placeholders); the second half of the rows is padded everywhere."""
    return common.make_batch(
        bc.batch,
        bc.image_size,
        bc.instruction_len,
        bc.instruction_len,
        bc.target_len,
        qformer_vocab=bc.qformer_vocab,
        max_token=reference.image_token(model_config(bc)),
    )


def pin_threads(threads: int) -> int:
    """Pin this process to `threads` cores and set XLA's flags; call before jax's backend starts."""
    cores = sorted(os.sched_getaffinity(0))
    threads = min(threads or len(cores), len(cores))
    os.sched_setaffinity(0, cores[:threads])
    flags_ = os.environ.get("XLA_FLAGS", "")
    flags_ += f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
    flags_ += f" intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = flags_.strip()
    import torch

    torch.set_num_threads(threads)
    return threads


MEASURED = ("train_step", "forward", "greedy", "beam", "first_token")
GENERATIONS = (("greedy", 1, None), ("beam", None, None), ("first_token", 1, 1))


def _generations(bc: BenchConfig):
    """(name, beams, new tokens) of the measured generate calls."""
    for name, beams, new in GENERATIONS:
        yield name, beams or bc.num_beams, new or bc.new_tokens


def prepare_reference(bc: BenchConfig, hf_model, batch) -> tuple[dict[str, Callable], dict]:
    """The reference's measured calls (name -> fn) and facts about them."""
    import torch

    config = model_config(bc)
    info: dict[str, Any] = {
        "attn_implementation": getattr(hf_model.config, "_attn_implementation", None)
    }
    inputs = reference.to_hf(batch, config)
    gen_inputs = reference.to_hf(batch, config, labels=False)
    fns: dict[str, Callable[[], Any]] = {}

    def forward():
        hf_model.eval()
        with torch.no_grad():
            return hf_model(**inputs)

    fns["forward"] = forward
    info["forward_loss"] = float(forward().loss)
    for name, beams, new in _generations(bc):

        def generate(beams=beams, new=new):
            hf_model.eval()
            with torch.no_grad():
                return hf_model.generate(
                    **gen_inputs,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    num_beams=beams,
                    do_sample=False,
                )

        fns[name] = generate

    trainable = reference.trainable_parameters(hf_model)
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.05)

    def train_step():
        hf_model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = hf_model(**inputs).loss
        loss.backward()
        optimizer.step()
        return loss

    fns["train_step"] = train_step
    info["trainable_params"] = sum(p.numel() for p in trainable)
    return fns, info


def prepare_ours(bc: BenchConfig, model, params, batch) -> tuple[dict[str, Callable], dict]:
    """Our measured calls (name -> fn, compiled here) and facts about them."""
    import jax
    import jax.numpy as jnp

    info: dict[str, Any] = {}
    fns: dict[str, Callable[[], Any]] = {}
    device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    params = jax.device_put(params)
    forward = jax.jit(
        lambda p, b: (lambda out: (out.logits, out.loss))(model.apply({"params": p}, **b))
    )
    fns["forward"] = lambda: jax.block_until_ready(forward(params, device_batch))
    info["forward_loss"] = float(forward(params, device_batch)[1])

    gen_batch = {k: v for k, v in device_batch.items() if k != "labels"}
    for name, beams, new in _generations(bc):

        def generate(beams=beams, new=new):
            return jax.block_until_ready(
                ib_jax.generate(
                    model,
                    params,
                    gen_batch,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    num_beams=beams,
                )
            )

        start = time.perf_counter()
        generate()
        info[f"{name}_compile_s"] = time.perf_counter() - start
        fns[name] = generate

    # Training step: the trainer's program (jitted step from ib_jax/train/step.py).
    config = run_sections.train_config(bc, model.config)
    program, mesh, rules = run_sections.one_device_program(config)
    with sharding.activate(mesh, rules):
        trainable, frozen = split_params(params, config.train.trainable)
        shardings_of = lambda tree: jax.tree_util.tree_map(lambda x: x.sharding, tree)  # noqa: E731
        trainable = jax.device_put(trainable, shardings_of(program.abstract_state.trainable))
        # The step donates its state: copy, so that `params` (forward, generate) stays alive.
        trainable = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), trainable)
        frozen = jax.device_put(frozen, shardings_of(program.abstract_frozen))
        opt_state = jax.jit(
            program.optimizer.init, out_shardings=shardings_of(program.abstract_state.opt_state)
        )(trainable)
        state = TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=opt_state)
        step_batch = sharding.global_batch(batch, mesh)
        start = time.perf_counter()
        compiled = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        ).compile()
        info["train_compile_s"] = time.perf_counter() - start
    holder = {"state": state}

    def train_step():
        holder["state"], metrics = compiled(holder["state"], frozen, step_batch)
        return jax.block_until_ready(metrics)

    fns["train_step"] = train_step
    info["train_first_loss"] = float(train_step()["loss"])
    info["trainable_params"] = int(sum(x.size for x in jax.tree_util.tree_leaves(trainable)))
    info["compiled_flops"] = common.compiled_flops(compiled)
    info["memory"] = {"none (headline)": common.compiled_memory(compiled)}
    shapes = flops.Shapes(
        bc.batch, bc.image_size, bc.instruction_len, bc.instruction_len, bc.target_len
    )
    info["analytic_train_flops"] = flops.train_step_flops(model.config, shapes)
    info["analytic_forward_flops"] = flops.forward_flops(model.config, shapes)
    return fns, info


def paired(
    ref_fns: dict, our_fns: dict, warmup: int, repeats: int, log: Callable[[str], None]
) -> tuple[dict, dict]:
    """Time each measurement on both sides in alternation (ref, ours, ref, ours, ...), so that both
    see the same background load; medians of `repeats` after `warmup` runs of each."""
    times: dict[str, dict[str, list]] = {"ref": {}, "ours": {}}
    for name in MEASURED:
        for _ in range(warmup):
            ref_fns[name]()
            our_fns[name]()
        times["ref"][name], times["ours"][name] = [], []
        for _ in range(repeats):
            for side, fn in (("ref", ref_fns[name]), ("ours", our_fns[name])):
                start = time.perf_counter()
                fn()
                times[side][name].append(time.perf_counter() - start)
        log(
            f"  {name}: reference {statistics.median(times['ref'][name]):.3f} s, "
            f"ours {statistics.median(times['ours'][name]):.3f} s"
        )

    def summary(ts):
        return {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "runs": len(ts),
            "all_s": [round(t, 4) for t in ts],
        }

    return (
        {k: summary(v) for k, v in times["ref"].items()},
        {k: summary(v) for k, v in times["ours"].items()},
    )


def run(
    bc: BenchConfig,
    threads: int = 0,
    *,
    sections: tuple[str, ...] = SECTIONS,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Everything; returns the raw results (`run_report.table` formats them). Threads must be
    pinned already (`pin_threads`)."""
    import torch

    res: dict[str, Any] = {
        "config": dataclasses.asdict(bc),
        "threads": threads or torch.get_num_threads(),
        "init": "fan-in scaled (benchmarks/reference.py)",
        "load_before": run_sections.load_snapshot(),
        "section_s": {},
    }
    clock = {"name": "setup", "start": time.perf_counter()}

    def log_section(name: str) -> None:
        now = time.perf_counter()
        res["section_s"][clock["name"]] = round(now - clock["start"], 1)
        clock.update(name=name, start=now)
        log(f"[{sum(res['section_s'].values()):.0f} s] {name}")

    log("building the reference and converting it")
    hf_model = reference.build(model_config(bc), seed=0)
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        model, params = ib_jax.load_pretrained(directory)
    batch = make_batch(bc)
    log_section("measuring the matmul peak")
    res["peak"] = run_sections.matmul_peak(bc.matmul_size, max(5, bc.repeats))
    log_section("preparing (compiling) both sides")
    ref_fns, res["reference"] = prepare_reference(bc, hf_model, batch)
    our_fns, res["ours"] = prepare_ours(bc, model, params, batch)
    # HF returns the T5 start token first; ours returns the new tokens only.
    ref_tokens = {k: ref_fns[k]().numpy()[:, 1:] for k in ("greedy", "beam")}
    our_tokens = {k: np.asarray(our_fns[k]()) for k in ("greedy", "beam")}
    log_section("timing both sides in alternation")
    ref_times, our_times = paired(ref_fns, our_fns, bc.warmup, bc.repeats, log)
    res["reference"].update(ref_times)
    res["ours"].update(our_times)
    res["agreement"] = {
        "loss_relative_difference": common.relative_difference(
            res["reference"]["forward_loss"], res["ours"]["forward_loss"]
        ),
        "tokens_equal": {
            k: common.fraction_equal(ref_tokens[k], our_tokens[k]) for k in ref_tokens
        },
    }
    for side in ("reference", "ours"):  # (greedy - first token) / (n - 1): one decode step
        r = res[side]
        r["greedy_per_step_s"] = (r["greedy"]["median_s"] - r["first_token"]["median_s"]) / max(
            1, bc.new_tokens - 1
        )
    analytic = res["ours"]["analytic_train_flops"]
    # The peak is the best of its runs (a peak; the median under load would flatter the MFU).
    res["mfu"] = (
        analytic / res["ours"]["train_step"]["median_s"] / res["peak"]["xla_best_flops_per_s"]
    )
    res["mfu_reference"] = (
        analytic
        / res["reference"]["train_step"]["median_s"]
        / res["peak"]["torch_best_flops_per_s"]
    )
    if "lora" in sections:
        log_section("LoRA training step (HF + peft vs ours)")
        res["lora"] = run_lora.measure(bc, hf_model, model, params, batch, log)
    if "memory" in sections:
        log_section("compiling the step with remat policies")
        res["memory"] = run_sections.memory_by_remat(
            bc, model.config, res["ours"]["memory"]["none (headline)"]
        )
    if "compile" in sections:
        log_section("compile time vs depth")
        res["compile"] = run_sections.compile_times(bc)
    if "pipeline" in sections:
        log_section("input pipeline")
        res["input_pipeline"] = run_sections.input_pipeline(bc)
    log_section("done")
    res["load_after"] = run_sections.load_snapshot()
    return res


def define_flags() -> None:
    """The suite's flags; defined only when it runs as a program (importing it defines none)."""
    flags.DEFINE_bool("tiny", False, "tiny sizes (seconds; what the tests run)")
    flags.DEFINE_integer("threads", 0, "cores for both frameworks (0: all available)")
    flags.DEFINE_integer("repeats", 0, "timed runs per measurement (0: the config's)")
    flags.DEFINE_list("skip", [], f"sections to skip, comma-separated: {','.join(SECTIONS)}")
    flags.DEFINE_string("json", "", "also write the raw results here")
    flags.DEFINE_string("markdown", "", "also write the table here")


def main(argv: list[str]) -> None:
    """Run the suite per the flags; print the table (and write --json / --markdown)."""
    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = set(FLAGS.skip) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"--skip: unknown sections {sorted(unknown)}; known: {SECTIONS}")
    threads = pin_threads(FLAGS.threads)
    bc = tiny() if FLAGS.tiny else BenchConfig()
    if FLAGS.repeats:
        bc = dataclasses.replace(bc, repeats=FLAGS.repeats)
    sections = tuple(s for s in SECTIONS if s not in FLAGS.skip)
    res = run(bc, threads, sections=sections)
    write_results(run_report.table(res), res, FLAGS.json, FLAGS.markdown)


def write_results(
    text: str, results: dict[str, Any], json_path: str | None, markdown_path: str | None
) -> None:
    """Print the table `text`; write `results` as JSON and the table as markdown where asked."""
    print(text, flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
