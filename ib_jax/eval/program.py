"""The eval job's device side: the mesh, parameters on it, and jitted generation and ranking.

`InferenceProgram.generate` / `.rank` take this process's rows of a batch (numpy, [B / P, ...]),
run one step jitted with explicit shardings over the global batch (rows split over data x fsdp,
parameters as their logical axis names and `config.mesh.axis_rules` say) and return this
process's rows of the result, with a per-row flag: the row met NaN or infinite logits (scores).

The mesh is `config.eval.mesh` (a `shape`, and optionally `axis_rules`; default rules those of
`config.mesh`), else `config.mesh` (the trainer's), else one device (single process only).
Numerics: `config.eval.dtype` (compute) and `config.eval.param_dtype` (parameters are cast to it
as they are restored), both float32 by default for results equal to the reference's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ib_jax import checkpoint, decode, sharding
from ib_jax.contract.batch import MODEL_INPUTS
from ib_jax.contract.config import EvalJobConfig, build
from ib_jax.contract.model import ModelConfig
from ib_jax.eval import hosts, ranking
from ib_jax.models.instructblip import InstructBlip, init_params


def eval_mesh(
    config: ml_collections.ConfigDict, devices: list | None = None
) -> tuple[jax.sharding.Mesh, tuple]:
    """(mesh, logical axis rules) of the eval job (see the module docstring) over `devices`
    (default: all; the planner passes a TPU slice's compile-only devices)."""
    devices = devices if devices is not None else jax.devices()
    train_mesh = config.get("mesh")
    override = build(EvalJobConfig, "eval", config.get("eval")).mesh
    if override:
        mesh_config = ml_collections.ConfigDict(
            dict(
                shape=dict(override["shape"]),
                axis_rules=list(
                    override.get("axis_rules") or (train_mesh.axis_rules if train_mesh else [])
                ),
            )
        )
    elif train_mesh:
        mesh_config = train_mesh
    elif jax.process_count() == 1:
        one = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=1, tensor=1), axis_rules=[]))
        return sharding.make_mesh(one, devices[:1]), ()
    else:
        raise ValueError(
            f"{jax.process_count()} processes need a mesh: set config.mesh or config.eval.mesh"
        )
    return sharding.make_mesh(mesh_config, devices), sharding.axis_rules(mesh_config)


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
    """The eval batch must split over the processes and the mesh's batch axes (data x fsdp)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for what, count in (("processes", jax.process_count()), ("data x fsdp devices", shards)):
        if global_batch % count:
            raise ValueError(
                f"config.eval.batch_size={global_batch} does not split over {count} {what}; "
                "choose a multiple"
            )


def inference_config(model_config: ModelConfig, eval_config: Any) -> ModelConfig:
    """The checkpoint's architecture with the eval job's numerics (`config.eval` dtype /
    param_dtype, float32 by default: `EvalJobConfig`); remat is moot without gradients."""
    job = build(EvalJobConfig, "eval", eval_config)
    return dataclasses.replace(
        model_config, dtype=job.dtype, param_dtype=job.param_dtype, remat_policy="none"
    )


def abstract_params(model: InstructBlip, mesh: jax.sharding.Mesh, rules: tuple) -> Any:
    """ShapeDtypeStructs of the model's parameters (dtype `param_dtype`) carrying the shardings
    their logical axis names get from `rules` on `mesh`; nothing is allocated."""
    c = model.config
    size = c.vision.image_size
    shapes = {
        "pixel_values": (1, size, size, 3),
        **{k: (1, 4) for k in MODEL_INPUTS[1:]},
        "labels": (1, 2),
    }

    def init():  # the key is made inside: no eager op (works for compile-only devices too)
        batch = {
            k: jnp.zeros(s, jnp.float32 if k == "pixel_values" else jnp.int32)
            for k, s in shapes.items()
        }
        return init_params(model, jax.random.key(0), batch)

    # Rules without a mesh: shapes and metadata only (activation constraints are moot here).
    with nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init)
    return checkpoint.abstract_like(
        sharding.unboxed(boxed), sharding.logical_shardings(boxed, mesh, rules)
    )


def place(tree: Any, abstract: Any) -> Any:
    """Host arrays -> global arrays with `abstract`'s shardings and dtypes; each device receives
    only its own slice (no whole copy on one device; works across processes)."""

    def put(value, target):
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ValueError(f"parameter of shape {value.shape}, the model wants {target.shape}")
        return jax.make_array_from_callback(
            target.shape, target.sharding, lambda index: value[index].astype(target.dtype)
        )

    return jax.tree_util.tree_map(put, tree, abstract)


@dataclasses.dataclass
class InferenceProgram:
    """A model with its parameters on `mesh`, and the jitted eval steps (cached per setting)."""

    model: InstructBlip
    params: Any  # global arrays, sharded per the logical axis rules
    mesh: jax.sharding.Mesh
    rules: tuple
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def batch_sharding(self) -> NamedSharding:
        """Rows over data x fsdp; the other axes of any rank replicated."""
        return NamedSharding(self.mesh, PartitionSpec(sharding.BATCH_AXES))

    def _jit(self, fn: Any, num_replicated: int) -> Any:
        """jit(fn)(params, inputs, labels | knobs and seed) with explicit in/out shardings."""
        params = jax.tree_util.tree_map(lambda x: x.sharding, self.params)
        rows, copy = self.batch_sharding, sharding.replicated(self.mesh)
        extra = (rows,) if num_replicated == 0 else (copy,) * num_replicated
        return jax.jit(fn, in_shardings=(params, rows, *extra), out_shardings=(rows, rows))

    def _run(
        self, key: Any, make: Any, batch: dict[str, Any], *args: Any
    ) -> tuple[np.ndarray, ...]:
        """Run the step `make()` jits (compiled once per key and shapes) on the global batch."""
        inputs = {k: np.asarray(batch[k]) for k in MODEL_INPUTS if batch.get(k) is not None}
        inputs = sharding.global_batch(inputs, self.mesh)
        key = (key, str(jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), (inputs, args))))
        with sharding.activate(self.mesh, self.rules):
            if key not in self._compiled:
                self._compiled[key] = make().lower(self.params, inputs, *args).compile()
                # Processes finish compiling far apart; the step's first collective would not wait.
                hosts.sync("compiled")
            outputs = self._compiled[key](self.params, inputs, *args)
        return tuple(self._local(x) for x in outputs)

    def _local(self, x: jax.Array) -> np.ndarray:
        """This process's rows of a batch-sharded output (the inverse of `global_batch`)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            x = multihost_utils.global_array_to_host_local_array(
                x, self.mesh, PartitionSpec(sharding.BATCH_AXES)
            )
        return np.asarray(x)

    def _replicated(self, value: Any) -> jax.Array:
        value = np.asarray(value)
        return jax.make_array_from_callback(
            value.shape, sharding.replicated(self.mesh), lambda index: value[index]
        )

    def _generate_parts(self, *, seed: int = 0, **settings: Any) -> tuple[Any, Any, tuple]:
        """(cache key, make the jitted step, its host arguments after params and inputs)."""
        decode_settings, knobs = decode.settings_and_knobs(self.model.config.text, **settings)
        search = decode.search_fn(self.model, decode_settings)

        def step(params, inputs, knobs, seed):
            return search(params, inputs, knobs, jax.random.key(seed))

        make = lambda: self._jit(step, num_replicated=2)  # noqa: E731
        return ("generate", decode_settings), make, (knobs, np.uint32(seed))

    def generate(
        self,
        batch: dict[str, Any],
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
        penalize_prompt: bool = True,
        do_sample: bool = False,
        top_p: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows [b, ...] -> (tokens [b, max_new_tokens] int32, nonfinite [b] bool),
        as `ib_jax.decode.generate` (greedy, beam search or sampling with `seed`)."""
        key, make, host_args = self._generate_parts(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
            repetition_penalty=repetition_penalty,
            penalize_prompt=penalize_prompt,
            do_sample=do_sample,
            top_p=top_p,
            temperature=temperature,
            seed=seed,
        )
        args = jax.tree_util.tree_map(self._replicated, host_args)
        return self._run(key, make, batch, *args)

    def _rank_parts(self, length_normalize: bool, chunk_size: int) -> tuple[Any, Any]:
        score = ranking.score_fn(self.model, bool(length_normalize), int(chunk_size))
        make = lambda: self._jit(score, num_replicated=0)  # noqa: E731
        return ("rank", bool(length_normalize), int(chunk_size)), make

    def rank(
        self,
        batch: dict[str, Any],
        labels: np.ndarray,
        *,
        length_normalize: bool = False,
        chunk_size: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows and candidate labels [b, C, L] -> (scores [b, C] float32, nonfinite
        [b] bool), as `ib_jax.eval.ranking.score_candidates`."""
        key, make = self._rank_parts(length_normalize, chunk_size)
        labels = sharding.global_batch({"labels": np.asarray(labels, np.int32)}, self.mesh)
        return self._run(key, make, batch, labels["labels"])

    def lower_generate(self, inputs: dict[str, Any], **settings: Any) -> Any:
        """The generation step lowered for abstract global inputs (ShapeDtypeStructs with the
        batch sharding), e.g. on compile-only devices (launch/aot_eval.py); `settings` as
        `generate` takes them."""
        _, make, host_args = self._generate_parts(**settings)
        copy = sharding.replicated(self.mesh)
        args = jax.tree_util.tree_map(
            lambda v: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=copy),
            host_args,
        )
        with sharding.activate(self.mesh, self.rules):
            return make().lower(self.params, inputs, *args)

    def lower_rank(
        self,
        inputs: dict[str, Any],
        labels: Any,
        length_normalize: bool = False,
        chunk_size: int = 0,
    ) -> Any:
        """The ranking step lowered for abstract inputs and candidate labels [B, C, L] int32."""
        _, make = self._rank_parts(length_normalize, chunk_size)
        with sharding.activate(self.mesh, self.rules):
            return make().lower(self.params, inputs, labels)


__all__ = [
    "InferenceProgram",
    "eval_mesh",
    "check_batch",
    "inference_config",
    "abstract_params",
    "place",
]
