"""Our parameters -> a Hugging Face directory: the conversion tables run backwards.

One table per format, the converter's own (from the LM family's tables, `api.family_rules`:
`HF_RULES`, or `blip2_rules.hf_blip2_rules`'s image side + `HF_LM_RULES`): each parameter path
is matched against the rules' *targets*, the source key is the rule's pattern with the layer
filled in, and `rules.to_torch` inverts the hook. Before anything is written, the exported keys
and shapes are planned through the forward table (`core.plan`), so an export that the converter
would not read back stops with its message.

Formats:
  instructblip  `InstructBlipForConditionalGeneration` (the instruction-aware model)
  blip2         `Blip2ForConditionalGeneration` (a model trained with `instruction_aware=False`,
                e.g. configs/blip2_stage2.py; HF's BLIP-2 has no Q-Former text side)

`hf_config` is the inverse of `hf_config.model_config_from_hf`. `write_safetensors` writes sharded
safetensors and their index tensor by tensor: it holds one converted tensor at a time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import traverse_util

from ib_jax.contract.model import ModelConfig
from ib_jax.convert import api, blip2_rules, core, peft, readers, rules
from ib_jax.models import lora

FORMATS = ("instructblip", "blip2")
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One of our parameters in the unscanned layout, read on demand."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One HF tensor: its key, torch shape, the parameter it comes from and how to convert it."""

    key: str
    shape: tuple[int, ...]
    path: str
    rule: rules.Rule
    leaf: Leaf

    def read(self, dtype: np.dtype) -> np.ndarray:
        """The torch tensor's values as a C-contiguous array of `dtype`."""
        array = rules.to_torch(self.rule, np.asarray(self.leaf.read()), self.shape)
        return np.ascontiguousarray(array, dtype=dtype)


def unscanned_leaves(params: dict[str, Any], scanned: bool) -> dict[str, Leaf]:
    """{unscanned path: Leaf}; a scanned stack (`layers`/`groups`, leading axis L) is read one
    layer at a time, so a stacked leaf is never copied whole."""
    out = {}
    for path, array in traverse_util.flatten_dict(params, sep="/").items():
        parts = path.split("/")
        stack = next((i for i, p in enumerate(parts) if p in ("layers", "groups")), None)
        if not scanned or stack is None:
            out[path] = Leaf(tuple(array.shape), np.dtype(array.dtype), lambda a=array: a)
            continue
        for i in range(array.shape[0]):
            name = "/".join(parts[:stack] + [f"{parts[stack]}_{i}"] + parts[stack + 1 :])
            out[name] = Leaf(
                tuple(array.shape[1:]), np.dtype(array.dtype), lambda a=array, i=i: a[i]
            )
    return out


def table(config: ModelConfig, fmt: str) -> tuple[list[rules.Rule], dict[str, str]]:
    """The conversion table (and its aliases) of `fmt` for `config`'s language model."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: one of {', '.join(FORMATS)}")
    tables = api.family_rules(config)
    if fmt == "instructblip":
        return tables.HF_RULES, tables.HF_ALIASES
    image = [r for r in blip2_rules.hf_blip2_rules() if not r.target.startswith("language_model/")]
    return [*image, *tables.HF_LM_RULES], tables.HF_ALIASES


def _target_regex(rule: rules.Rule) -> re.Pattern:
    pattern = re.escape(rule.target)
    for name in ("layer", "group", "sub"):
        pattern = pattern.replace(re.escape("{" + name + "}"), rf"(?P<{name}>\d+)")
    return re.compile(pattern)


def _source_key(rule: rules.Rule, fields: dict[str, str], config: ModelConfig) -> str:
    if "group" in fields:
        freq = config.qformer.cross_attention_frequency
        fields = {"layer": str(int(fields["group"]) * freq + int(fields["sub"]))}
    key = rule.pattern
    if "layer" in fields:
        key = key.replace(r"(?P<layer>\d+)", fields["layer"])
    key = re.sub(r"\\(.)", r"\1", key)
    if re.search(r"[()\[\]|*+?^$]", key) or not re.fullmatch(rule.pattern, key):
        raise core.ConversionError(f"rule {rule.pattern} -> {rule.target} cannot be run backwards")
    return key


def plan_export(config: ModelConfig, leaves: dict[str, Leaf], fmt: str) -> list[Tensor]:
    """Every parameter matched to one HF key; raises one `ConversionError` listing all problems.

    The result is checked against the forward direction: `core.plan` over the exported keys and
    shapes must give back exactly our parameters."""
    if fmt == "instructblip" and not config.instruction_aware:
        raise core.ConversionError(
            "this model was trained with instruction_aware=False: it has no Q-Former text side, "
            "which InstructBlipForConditionalGeneration needs; export it with --format=blip2"
        )
    if fmt == "blip2" and config.instruction_aware:
        raise core.ConversionError(
            "Blip2ForConditionalGeneration has no Q-Former text input: an instruction-aware "
            "model exports with --format=instructblip"
        )
    rule_table, aliases = table(config, fmt)
    compiled = [(_target_regex(rule), rule) for rule in rule_table]
    tensors: dict[str, Tensor] = {}
    problems = []
    for path, leaf in leaves.items():
        found = [(m, rule) for regex, rule in compiled if (m := regex.fullmatch(path))]
        if not found:
            problems.append(f"parameter {path} {leaf.shape}: no {fmt} rule produces it")
            continue
        match, rule = found[0]
        key = _source_key(rule, match.groupdict(), config)
        shape = rules.torch_shape(rule, leaf.shape)
        if key in tensors:
            problems.append(f"parameters {tensors[key].path} and {path} both export to {key}")
            continue
        tensors[key] = Tensor(key, shape, path, rule, leaf)
    if problems:
        raise core.ConversionError(
            f"{len(problems)} export problem(s):\n  " + "\n  ".join(problems)
        )
    if config.text.tie_word_embeddings and not api.family_rules(config).hf_ties_head(config.text):
        head = _head_copy(leaves, compiled)
        tensors[head.key] = head
        config = dataclasses.replace(
            config, text=dataclasses.replace(config.text, tie_word_embeddings=False)
        )
    _check_forward(config, list(tensors.values()), rule_table, aliases)
    return list(tensors.values())


def own_path(path: str, config: ModelConfig) -> str:
    """An unscanned parameter path in `config`'s own layout (`layers_3` -> `layers` when scanned):
    the names `config.model.lora` and `config.train.trainable` were written against."""
    found = core.stacked_name(path) if config.scan_layers else None
    return found[0] if found else path


def plan_adapter(
    config: ModelConfig, leaves: dict[str, Leaf], fmt: str, trained: tuple[str, ...] = ()
) -> tuple[list[Tensor], dict[str, Any]]:
    """A LoRA model's leaves -> (the tensors of a peft adapter, its adapter_config.json).

    The LoRA pairs go through the LoRA rules derived from the `fmt` table
    (`peft.lora_rules`); the base tensors of `config.lora.modules_to_save` and of the modules
    holding parameters `trained` names (a training run's non-LoRA `config.train.trainable`) are
    saved in full, as peft's `modules_to_save`."""
    base_leaves = {p: leaf for p, leaf in leaves.items() if not lora.is_lora_path(p)}
    base = plan_export(lora.without(config), base_leaves, fmt)
    compiled = [(_target_regex(r), r) for r in peft.lora_rules(table(config, fmt)[0])]
    tensors, modules, problems = [], {}, []
    for path, leaf in leaves.items():
        if not lora.is_lora_path(path):
            continue
        found = [(m, rule) for regex, rule in compiled if (m := regex.fullmatch(path))]
        if not found:
            problems.append(f"LoRA parameter {path} {leaf.shape}: no {fmt} rule produces it")
            continue
        key = _source_key(found[0][1], found[0][0].groupdict(), config)
        tensors.append(
            Tensor(
                peft.PREFIX + key,
                rules.torch_shape(found[0][1], leaf.shape),
                path,
                *found[0][1:],
                leaf,
            )
        )
        if path.endswith("/lora_a"):
            module = own_path(path, config).rsplit("/", 1)[0]
            rank, scaling = lora.rank_and_scaling(config.lora, module) or (0, 0.0)
            modules[peft.module_of(peft.module_of(key))] = (leaf.shape[-1], scaling * rank)
    names = list(config.lora.modules_to_save)
    for tensor in base:
        if trained and re.search(
            "|".join(f"(?:{t})" for t in trained), own_path(tensor.path, config)
        ):
            if "." not in tensor.key:
                problems.append(
                    f"{tensor.path} trained, but {tensor.key} belongs to no torch module: peft's "
                    "modules_to_save cannot hold it (export with --merge_lora)"
                )
            elif not peft.saves(peft.module_of(tensor.key), names):
                names.append(peft.module_of(tensor.key))
    if problems:
        raise core.ConversionError(
            f"{len(problems)} export problem(s):\n  " + "\n  ".join(problems)
        )
    saved = [t for t in base if "." in t.key and peft.saves(peft.module_of(t.key), names)]
    tensors += [dataclasses.replace(t, key=peft.PREFIX + t.key) for t in saved]
    return tensors, peft.adapter_config(config.lora, modules, names, None)


def _head_copy(leaves: dict[str, Leaf], compiled) -> Tensor:
    """`language_model.lm_head.weight` holding the shared embedding [V, D] (a tied T5 head that
    HF would not read as tied: the family's `hf_ties_head`)."""
    shared = leaves["language_model/shared/embedding"]
    path = "language_model/lm_head/kernel"
    match, rule = next((m, r) for regex, r in compiled if (m := regex.fullmatch(path)))
    kernel = Leaf(shared.shape[::-1], shared.dtype, lambda: np.asarray(shared.read()).T)
    key = _source_key(rule, match.groupdict(), None)
    return Tensor(key, rules.torch_shape(rule, kernel.shape), path, rule, kernel)


def _check_forward(config, tensors: list[Tensor], rule_table, aliases) -> None:
    """What the converter would make of the exported keys and shapes must be our parameters."""

    def unread():
        raise AssertionError("the forward check reads no tensor")

    state = readers.LazyState(
        {t.key: readers.Entry(t.shape, t.leaf.dtype, "(export)", t.key, unread) for t in tensors}
    )
    plan = core.plan(state, rule_table, dataclasses.replace(config, scan_layers=False), aliases)
    wrong = [t.key for t in tensors if plan.assignments[t.path].key != t.key]
    if wrong:
        raise core.ConversionError(f"exported keys read back as other parameters: {wrong[:6]}")


def hf_config(config: ModelConfig, fmt: str, image_token_index: int, dtype: str) -> dict[str, Any]:
    """ModelConfig -> the `config.json` of `fmt` (the inverse of `model_config_from_hf`)."""
    v, q = config.vision, config.qformer
    blip2 = fmt == "blip2"
    vision = dict(
        model_type="blip_2_vision_model" if blip2 else "instructblip_vision_model",
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers,
        num_attention_heads=v.num_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        layer_norm_eps=v.layer_norm_eps,
        hidden_act=v.hidden_act,
        qkv_bias=True,
    )
    qformer = dict(
        model_type="blip_2_qformer" if blip2 else "instructblip_qformer",
        vocab_size=q.vocab_size,
        hidden_size=q.hidden_size,
        intermediate_size=q.intermediate_size,
        num_hidden_layers=q.num_layers,
        num_attention_heads=q.num_heads,
        max_position_embeddings=q.max_position_embeddings,
        layer_norm_eps=q.layer_norm_eps,
        cross_attention_frequency=q.cross_attention_frequency,
        encoder_hidden_size=q.encoder_hidden_size,
        hidden_act=q.hidden_act,
    )
    if blip2:
        qformer["use_qformer_text_input"] = False
    tables = api.family_rules(config)
    return dict(
        architectures=[
            "Blip2ForConditionalGeneration" if blip2 else "InstructBlipForConditionalGeneration"
        ],
        model_type="blip-2" if blip2 else "instructblip",
        dtype=dtype,
        num_query_tokens=config.num_query_tokens,
        image_token_index=image_token_index,
        use_decoder_only_language_model=tables.DECODER_ONLY,
        vision_config=vision,
        qformer_config=qformer,
        text_config=tables.hf_text_config(config.text),
    )


@dataclasses.dataclass
class ShardStats:
    """What was written: shard files, bytes, tensors, and the largest tensor held at once."""

    shards: list[str]
    total_bytes: int
    tensors: int
    max_tensor_bytes: int


def _shards(tensors: list[Tensor], itemsize: int, shard_bytes: int) -> list[list[Tensor]]:
    shards: list[list[Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        nbytes = math.prod(tensor.shape) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += nbytes
    return shards


def _header(tensors: list[Tensor], code: str, itemsize: int) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        end = offset + math.prod(tensor.shape) * itemsize
        header[tensor.key] = dict(dtype=code, shape=list(tensor.shape), data_offsets=[offset, end])
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


def _dtype(name: str) -> np.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: one of {', '.join(DTYPES)}")
    return readers._numpy_dtype(name)


def write_safetensors(
    directory: str, tensors: list[Tensor], dtype: str, shard_bytes: int
) -> ShardStats:
    """`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` in `directory`.

    Each shard's header is written from the planned shapes, then its tensors one at a time; a
    shard is written under a temporary name and renamed when complete."""
    np_dtype = _dtype(dtype)
    shards = _shards(tensors, np_dtype.itemsize, shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    stats = ShardStats(names, 0, 0, 0)
    weight_map = {}
    for name, members in zip(names, shards):
        write_file(os.path.join(directory, name), members, dtype, stats)
        weight_map.update({tensor.key: name for tensor in members})
    index = {"metadata": {"total_size": stats.total_bytes}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return stats


def write_file(path: str, tensors: list[Tensor], dtype: str, stats: ShardStats) -> None:
    """One safetensors file of `tensors` in `dtype` (under a temporary name until complete);
    adds to `stats`."""
    np_dtype = _dtype(dtype)
    with open(path + ".tmp", "wb") as f:
        f.write(_header(tensors, DTYPES[dtype], np_dtype.itemsize))
        for tensor in tensors:
            array = tensor.read(np_dtype)
            if array.shape != tensor.shape:
                raise core.ConversionError(
                    f"{tensor.path} became {array.shape}, not {tensor.shape} ({tensor.key})"
                )
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
            stats.max_tensor_bytes = max(stats.max_tensor_bytes, array.nbytes)
            stats.total_bytes += array.nbytes
            stats.tensors += 1
    os.replace(path + ".tmp", path)


def write_adapter(directory: str, tensors: list[Tensor], config: dict, dtype: str) -> ShardStats:
    """A peft adapter directory: `adapter_model.safetensors` and, last, `adapter_config.json`."""
    stats = ShardStats([peft.WEIGHTS_FILE], 0, 0, 0)
    write_file(os.path.join(directory, peft.WEIGHTS_FILE), tensors, dtype, stats)
    with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)
    return stats
