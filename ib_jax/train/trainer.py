"""The training driver: mesh, data, parameters, the jitted step, logging and checkpoints.

Restarting the same command resumes from the newest readable checkpoint (parameters, optimizer
state and the data iterator; a damaged one is set aside, see `resume`), so the losses after a
restart equal those of an uninterrupted run. SIGTERM or SIGINT saves a checkpoint at the next step
on every process (JAX's preemption sync point, no per-step collective) and returns; a non-finite
loss stops the run before anything is saved. When the last step is saved, process 0 writes
`checkpoint.FINAL_MARKER` into the workdir. Whatever ends the run, the async checkpoint write in
flight completes and the data workers are stopped before `train` returns or raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

import ib_jax
from data_pipelines import preprocess, train_pipeline
from ib_jax import checkpoint, distributed, sharding, validate
from ib_jax.contract import precision
from ib_jax.contract.config import InitConfig, TrainConfig, build
from ib_jax.contract.model import ModelConfig, from_config_dict
from ib_jax.convert import blip2
from ib_jax.models.instructblip import InstructBlip, init_params
from ib_jax.train import data_feed, flops, metrics_writer, resume
from ib_jax.train import optimizer as optim
from ib_jax.train import preemption as preemption_lib
from ib_jax.train import state as state_lib
from ib_jax.train.state import TrainState, cast_floating, merge_params, split_params
from ib_jax.train.step import make_train_step

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def example_batch(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Global batch shapes from the data config (the model is initialised from shapes only).

    pixel_values [B, H, W, 3] float32; qformer_input_ids / qformer_attention_mask [B, Lq],
    input_ids / attention_mask [B, Lt], labels [B, Ly] int32, with B the global batch size and
    the L's the config's fixed padded lengths.
    """
    d = config.data
    b, size = d.global_batch_size, d.image_size
    ints = lambda length: jax.ShapeDtypeStruct((b, length), jnp.int32)  # noqa: E731
    return {
        "pixel_values": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32),
        "qformer_input_ids": ints(d.qformer_max_len),
        "qformer_attention_mask": ints(d.qformer_max_len),
        "input_ids": ints(d.text_max_len),
        "attention_mask": ints(d.text_max_len),
        "labels": ints(d.target_max_len),
    }


def _init_fn(
    model: InstructBlip, batch: dict[str, jax.ShapeDtypeStruct]
) -> Callable[[jax.Array], Any]:
    """rng -> boxed params, for a batch given by shapes only."""
    return lambda rng: init_params(
        model, rng, {k: jnp.zeros(v.shape, v.dtype) for k, v in batch.items()}
    )


def _pretrained_params(path: str, model_config: ModelConfig) -> Any:
    """Parameters of the pretrained model at `path`, laid out for `model_config` (scanned or not)."""
    model, params = ib_jax.load_pretrained(path, scan_layers=model_config.scan_layers)
    arch = lambda c: (c.vision, c.qformer, c.text, c.num_query_tokens)  # noqa: E731
    if arch(model.config) != arch(model_config):
        raise ValueError(
            f"config.init.pretrained={path} has another architecture than config.model"
        )
    return params


def _host_cast(tree: Any, dtype: str) -> Any:
    """Floating leaves to host numpy arrays of `dtype` (bf16 through ml_dtypes); others as they are."""

    def cast(x: Any) -> Any:
        """One leaf: fetched to the host and cast there if floating."""
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return np.asarray(x).astype(jnp.dtype(dtype))

    return jax.tree_util.tree_map(cast, tree)


def _initial_params(init: ml_collections.ConfigDict | InitConfig, model_config: ModelConfig) -> Any:
    """Host parameters named by `config.init`: a converted/HF InstructBLIP (`pretrained`), or the
    paper's start, a BLIP-2 checkpoint with BERT's text side (`blip2`, `bert`, `vit`,
    `language_model`, `seed`: see ib_jax/convert/blip2.py)."""
    init = build(InitConfig, "init", init)
    if init.pretrained and init.blip2:
        raise ValueError(
            f"config.init.pretrained={init.pretrained!r} and config.init.blip2={init.blip2!r}: "
            "name one starting point"
        )
    if init.pretrained:
        return _pretrained_params(init.pretrained, model_config)

    return blip2.initial_params(init, model_config)


@dataclasses.dataclass
class TrainProgram:
    """Everything about a training step that follows from (config, mesh), before any array exists.

    `abstract_*` are ShapeDtypeStructs carrying their shardings: enough to compile the step for a
    device topology that is not here (launch/aot.py), or to restore a checkpoint onto this mesh.
    """

    model: InstructBlip
    optimizer: optax.GradientTransformation
    init: Callable[[jax.Array], Any]  # rng -> boxed params
    param_shardings: Any
    abstract_state: TrainState
    abstract_frozen: Any
    abstract_batch: dict[str, jax.ShapeDtypeStruct]
    step_fn: Callable  # jitted (state, frozen, batch) -> (state, metrics)


def build_program(config: ml_collections.ConfigDict, mesh: Mesh, rules: tuple) -> TrainProgram:
    """The model, optimizer, abstract state and jitted step for `config` on `mesh`.

    Nothing is allocated: shapes come from `jax.eval_shape` and shardings from the logical axis
    names the modules give their parameters (`rules` map them to mesh axes). The step donates the
    train state (argument 0), so parameters and moments are updated in place; the frozen
    parameters are an argument of their own, never donated, differentiated or copied. Call under
    `sharding.activate(mesh, rules)`.
    """
    model = InstructBlip(from_config_dict(config.model))
    train_config = build(TrainConfig, "train", config.train)
    tx = optim.make_optimizer(train_config)
    init = _init_fn(model, example_batch(config))
    # The key is made inside eval_shape: no eager op, so this also works on compile-only meshes.
    boxed = jax.eval_shape(lambda: init(jax.random.key(0)))
    boxed_trainable, boxed_frozen = split_params(boxed, train_config.trainable)
    # Adam's moments keep their parameters' axis names, so they are sharded like them.
    boxed_opt_state = jax.eval_shape(tx.init, boxed_trainable)
    shard = lambda tree: sharding.logical_shardings(tree, mesh, rules)  # noqa: E731
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh)),
        trainable=checkpoint.abstract_like(
            sharding.unboxed(boxed_trainable), shard(boxed_trainable)
        ),
        opt_state=checkpoint.abstract_like(
            sharding.unboxed(boxed_opt_state), shard(boxed_opt_state)
        ),
    )
    frozen = checkpoint.abstract_like(
        cast_floating(sharding.unboxed(boxed_frozen), precision.frozen_dtype(config)),
        shard(boxed_frozen),
    )
    batch = {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, len(v.shape))
        )
        for k, v in example_batch(config).items()
    }
    shardings_of = lambda tree: jax.tree_util.tree_map(lambda x: x.sharding, tree)  # noqa: E731
    step_fn = jax.jit(
        make_train_step(model, tx, train_config.grad_accum_steps),
        in_shardings=(shardings_of(state), shardings_of(frozen), shardings_of(batch)),
        out_shardings=(shardings_of(state), sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    return TrainProgram(model, tx, init, shard(boxed), state, frozen, batch, step_fn)


def initial_state(
    config: ml_collections.ConfigDict, program: TrainProgram
) -> tuple[TrainState, Any]:
    """(train state, frozen params) at step 0: pretrained (config.init.pretrained) or random
    parameters, placed on the mesh with the program's shardings, and a fresh optimizer state.

    One compiled program makes the whole state (compiles dominate small runs)."""
    tcfg = build(TrainConfig, "train", config.train)
    frozen_dtype = precision.frozen_dtype(config)
    shardings_of = lambda tree: jax.tree_util.tree_map(lambda x: x.sharding, tree)  # noqa: E731
    out_shardings = (shardings_of(program.abstract_state), shardings_of(program.abstract_frozen))

    def make_state(trainable: Any) -> TrainState:
        """Trainable parameters -> the step-0 state (fresh optimizer moments)."""
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            trainable=trainable,
            opt_state=program.optimizer.init(trainable),
        )

    def make(params: Any) -> tuple[TrainState, Any]:
        """Full parameter tree -> (step-0 state, frozen params in their storage dtype)."""
        trainable, frozen = split_params(params, tcfg.trainable)
        return make_state(trainable), cast_floating(frozen, frozen_dtype)

    init = build(InitConfig, "init", config.get("init"))
    if init.pretrained or init.blip2:
        # The frozen towers are cast on the host: no fp32 copy of them ever reaches the devices.
        params = _initial_params(init, program.model.config)
        params = state_lib.complete_lora(params, program.init, jax.random.key(tcfg.seed))
        trainable, frozen = split_params(params, tcfg.trainable)
        frozen = jax.device_put(_host_cast(frozen, frozen_dtype), out_shardings[1])
        trainable = jax.device_put(trainable, shardings_of(program.abstract_state.trainable))
        return jax.jit(make_state, out_shardings=out_shardings[0])(trainable), frozen
    return jax.jit(lambda rng: make(nn.unbox(program.init(rng))), out_shardings=out_shardings)(
        jax.random.key(tcfg.seed)
    )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train per `config` in `workdir` (resuming from its newest readable checkpoint); returns
    the last logged metrics (loss, grad_norm, learning_rate, step time, throughput, MFU when
    known). The config is validated against the model and the data before anything is built
    (`ib_jax.validate`: an `InvalidRunError` lists every problem)."""
    validate.check(config, job="train", workdir=workdir)
    resume.policy(config)  # a misspelt policy fails now, not when a checkpoint is damaged
    tcfg = build(TrainConfig, "train", config.train)
    mesh, rules = sharding.make_mesh(config.mesh), sharding.axis_rules(config.mesh)
    dataset = train_pipeline.build_train_dataset(
        config.data, process_index=jax.process_index(), process_count=jax.process_count()
    )

    with sharding.activate(mesh, rules), contextlib.ExitStack() as cleanup:
        program = build_program(config, mesh, rules)
        logger.info("%s", state_lib.describe_split(program.abstract_state, program.abstract_frozen))
        manager = checkpoint.make_manager(
            workdir,
            config.checkpoint.every_steps,
            config.checkpoint.keep,
            config.checkpoint.async_save,
        )
        resumed = resume.restore_latest(config, workdir, manager, program, dataset)
        if resumed.step >= tcfg.num_steps:  # restored (so checked), not compiled
            logger.info(
                "already at step %d of %d: nothing to train in %s",
                resumed.step,
                tcfg.num_steps,
                workdir,
            )
            if jax.process_index() == 0:
                checkpoint.mark_training_done(workdir)
            return metrics_writer.last_metrics(workdir)
        feed = data_feed.DataFeed(
            resumed.data_iterator, int(preprocess.setting(config.data, "worker_count"))
        )
        # Closed last (callbacks run in reverse): the final save reads the iterator's state.
        cleanup.callback(feed.close)
        cleanup.callback(manager.close)
        start = resumed.step
        if resumed.state is None:
            state, frozen = initial_state(config, program)
        else:
            state, frozen = resumed.state, resumed.frozen

        # Compiled here from the abstract arguments, not on the first call: every process then
        # waits at a coordination-service barrier, because processes can finish compiling far
        # apart and the first collective (XLA:CPU's Gloo) gives up after 30 s of waiting.
        started = time.perf_counter()
        step_fn = program.step_fn.lower(
            program.abstract_state, program.abstract_frozen, program.abstract_batch
        ).compile()
        logger.info("train step compiled in %.1f s", time.perf_counter() - started)
        distributed.barrier("ib_jax_train_step_compiled")
        writer = metrics_writer.MetricsWriter(workdir, total_steps=tcfg.num_steps, start_step=start)
        cleanup.callback(writer.close)
        preemption = preemption_lib.Preemption()
        cleanup.callback(preemption.restore)
        # An error in the loop leaves an async save in flight: it completes (or fails) before
        # the manager closes, so no background thread outlives the job.
        cleanup.callback(manager.wait_until_finished)
        loop = _Loop(config, step_fn, feed, mesh, manager, writer, preemption)
        last, finished = _loop(loop, state, frozen, start)
    if finished and jax.process_index() == 0:
        # Tells an evaluation job watching this workdir that no further checkpoint will come.
        checkpoint.mark_training_done(workdir)
    return last


@dataclasses.dataclass(frozen=True)
class _Loop:
    """What the training loop runs with, built once by `train` (the state changes every step
    and is passed apart)."""

    config: ml_collections.ConfigDict
    step_fn: Callable  # compiled: (state, frozen, global batch) -> (state, metrics)
    feed: data_feed.DataFeed
    mesh: Mesh
    manager: Any  # orbax.checkpoint.CheckpointManager
    writer: metrics_writer.MetricsWriter
    preemption: preemption_lib.Preemption


def _loop(loop: _Loop, state: TrainState, frozen: Any, start: int) -> tuple[dict[str, float], bool]:
    """Steps start+1.. until num_steps, a preemption or stop_after_steps; (last metrics, finished)."""
    config, step_fn, feed, mesh = loop.config, loop.step_fn, loop.feed, loop.mesh
    manager, writer, preemption = loop.manager, loop.writer, loop.preemption
    tcfg = build(TrainConfig, "train", config.train)
    schedule = optim.learning_rate_schedule(tcfg)
    shapes = flops.Shapes.from_config(config)
    step_flops = flops.train_step_flops(from_config_dict(config.model), shapes)
    peak = flops.device_peak_flops(jax.devices()[0].device_kind, tcfg.peak_flops_per_device)
    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start + 1, tcfg.num_steps + 1):
        batch = sharding.global_batch(feed.next(step), mesh)
        state, metrics = step_fn(state, frozen, batch)
        window_steps += 1
        is_last = step == tcfg.num_steps
        # Reading the loss waits for the step; only logged steps do, so dispatch runs ahead.
        if step % tcfg.log_every == 0 or is_last or step == start + 1:
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss {loss} at step {step}; the last good checkpoint "
                    f"(step {manager.latest_step()}) is untouched"
                )
            elapsed = time.perf_counter() - window_start
            step_time = elapsed / window_steps
            last = {
                "loss": loss,
                "grad_norm": float(metrics["grad_norm"]),
                "learning_rate": float(schedule(step - 1)),
                "step_time_s": step_time,
                "examples_per_s": shapes.batch / step_time,
                "tokens_per_s": shapes.tokens / step_time,
            }
            if step_flops and peak:
                last["mfu"] = step_flops / step_time / (peak * jax.device_count())
            writer.write(step, last)
            window_start, window_steps = time.perf_counter(), 0
        stop = preemption.reached(step) or step - start == tcfg.stop_after_steps
        if stop or is_last or step % config.checkpoint.every_steps == 0:
            if not np.isfinite(float(metrics["loss"])):  # never save a diverged state
                raise NonFiniteLossError(
                    f"non-finite loss at step {step}; the last good checkpoint "
                    f"(step {manager.latest_step()}) is untouched"
                )
            checkpoint.save(
                manager,
                step,
                merge_params(state.trainable, frozen),
                state.opt_state,
                feed.iterator,
                config,
                force=stop or is_last,
            )
        if stop:
            return last, False
    return last, True
