"""python -m ib_jax.export: a training checkpoint or converted directory -> a Hugging Face directory.

  python -m ib_jax.export --checkpoint=WORKDIR [--step=N] --out=hf_model/ \\
      [--tokenizer_dir=processor/] [--dtype=float32] [--shard_size=5GB]
  python -m ib_jax.export --checkpoint=converted/ --out=hf_model/ --dtype=bfloat16
  python -m ib_jax.export --checkpoint=WORKDIR --out=adapter/ [--base_model=hf_base/]   (LoRA)
  python -m ib_jax.export --checkpoint=WORKDIR --out=hf_model/ --merge_lora

A model with `config.model.lora` exports as a peft adapter directory (`adapter_config.json` +
`adapter_model.safetensors`, ib_jax/convert/peft.py) that `PeftModel.from_pretrained(base, out)`
loads onto the exported base model; `--merge_lora` folds the pairs into the base kernels
(W + alpha / r * A @ B) and writes the whole model instead.

The result loads with `InstructBlipForConditionalGeneration.from_pretrained(out)` (or, for a model
trained with `instruction_aware=False` such as configs/blip2_stage2.py,
`Blip2ForConditionalGeneration`), with no ib_jax code: `config.json`, sharded safetensors with
`model.safetensors.index.json`, and the processor/tokenizer files of `--tokenizer_dir` when given.
Tensors are converted by running the conversion tables backwards (ib_jax/convert/export.py) and
written one at a time; frozen towers a training checkpoint keeps in bf16 are written at `--dtype`.

`image_token_index` (the id of the `<image>` placeholders HF's processor puts before the text, a
row of the LM vocabulary): `--image_token_index`, else the HF config's own for a directory
`ib_jax.convert --hf` wrote (its hf_extras.json), else the `<image>` token of `--tokenizer_dir`,
else for FlanT5's padded 32128-row vocabulary 32100 (the id HF's processor gives `<image>`, past
the tokenizer's 32100 pieces). A Vicuna vocabulary has no spare row: give the id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from typing import Any

from absl import app, flags

from ib_jax import checkpoint as checkpoint_lib
from ib_jax.contract.config import as_patterns
from ib_jax.contract.model import from_config_dict
from ib_jax.convert import api
from ib_jax.convert import export as export_lib
from ib_jax.models import lora

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
# Weights and model configs of a processor directory are not copied: the export writes its own.
_NOT_COPIED = re.compile(
    r"(config\.json|generation_config\.json|.*\.(safetensors|bin|pth|pt|msgpack|h5|ckpt)"
    r"|.*\.index\.json)"
)


def define_flags(flag_values: flags.FlagValues) -> None:
    """The command line, defined into `flag_values` (absl's global FLAGS when run as a program)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_string(
        "checkpoint",
        None,
        "a training workdir (WORKDIR/checkpoints/<step>/) or a converted directory",
        **fv,
    )
    flags.DEFINE_integer("step", None, "the training step to export (default: the latest)", **fv)
    flags.DEFINE_string("out", None, "output directory (new or empty)", **fv)
    flags.DEFINE_string(
        "tokenizer_dir", None, "a processor/tokenizer directory whose files are copied", **fv
    )
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "tensor dtype", **fv)
    flags.DEFINE_string("shard_size", "5GB", "largest safetensors shard (e.g. 2GB, 500MB)", **fv)
    flags.DEFINE_integer("image_token_index", -1, "id of the <image> placeholder (-1: auto)", **fv)
    flags.DEFINE_bool(
        "merge_lora",
        False,
        "a model with config.model.lora: fold the LoRA pairs into the base kernels and export the "
        "whole model (default: write the LoRA parameters as a peft adapter directory)",
        **fv,
    )
    flags.DEFINE_string(
        "base_model",
        None,
        "the adapter's base_model_name_or_path (the HF directory or hub name of the base model)",
        **fv,
    )
    flags.DEFINE_enum(
        "format",
        "auto",
        ["auto", "instructblip", "blip2"],
        "HF class (auto: instructblip, blip2 for instruction_aware=False models)",
        **fv,
    )


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB` or a number of bytes -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].upper() not in _UNITS:
        raise ValueError(f"--shard_size {text!r}: a size such as 5GB, 500MB or 2GiB")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def load_source(path: str, step: int | None) -> tuple[Any, dict[str, Any], str, tuple[str, ...]]:
    """(ModelConfig, params in its layout, a description, the regexes of the parameters the run
    trained besides LoRA: none for a converted directory) of a training workdir's step or a
    converted directory."""
    if api.is_converted_directory(path):
        if step is not None:
            raise ValueError(f"--step: {path} is a converted directory, which has no steps")
        config, params = api.load_converted(path)
        return config, params, f"converted directory {path}", ()
    if checkpoint_lib.finalized_steps(path):
        step, params, saved = checkpoint_lib.restore_params(path, step)
        if "model" not in saved:
            raise ValueError(
                f"{checkpoint_lib.step_dir(path, step)}/config holds no `model` section"
            )
        trained = as_patterns((saved.get("train") or {}).get("trainable", ()))
        return from_config_dict(saved["model"]), params, f"{path} step {step}", trained
    raise FileNotFoundError(
        f"--checkpoint {path}: neither a training workdir with a finished checkpoint "
        "(checkpoints/<step>/) nor a converted directory (config.json + params/)"
    )


def added_token_id(directory: str, content: str) -> int | None:
    """The id of added token `content` in a tokenizer directory's JSON files, if it has one."""
    path = os.path.join(directory, "tokenizer.json")
    if os.path.exists(path):
        with open(path) as f:
            for token in json.load(f).get("added_tokens", []):
                if token.get("content") == content:
                    return int(token["id"])
    path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path) as f:
            for index, token in json.load(f).get("added_tokens_decoder", {}).items():
                if token.get("content") == content:
                    return int(index)
    return None


def image_token_index(flag: int, tokenizer_dir: str | None, config) -> int:
    """See the module docstring; the id must be a row of the LM vocabulary."""
    vocab = config.text.vocab_size
    index, source = flag, "--image_token_index"
    if index < 0 and tokenizer_dir:
        found = added_token_id(tokenizer_dir, "<image>")
        index, source = (-1, "") if found is None else (found, f"<image> of {tokenizer_dir}")
    default = api.family_rules(config).IMAGE_TOKEN_INDEX  # FlanT5's first padding row
    if index < 0 and default is not None and vocab > default:
        index, source = default, f"the {config.lm_type} default {default}"
    if index < 0:
        raise ValueError(
            f"no row of the {vocab}-row LM vocabulary is known to be free for the <image> "
            "placeholder; give --image_token_index (an id the tokenizer never produces)"
        )
    if index >= vocab:
        raise ValueError(f"{source}: id {index} is not a row of the {vocab}-row LM vocabulary")
    return index


def copy_tokenizer(source: str, out: str) -> list[str]:
    """Copy the processor/tokenizer files (not weights or model configs), subfolders included."""
    if not os.path.isdir(source):
        raise FileNotFoundError(f"--tokenizer_dir {source} is not a directory")
    copied = []
    for root, _, files in os.walk(source):
        for name in sorted(files):
            if _NOT_COPIED.fullmatch(name):
                continue
            relative = os.path.relpath(os.path.join(root, name), source)
            os.makedirs(os.path.dirname(os.path.join(out, relative)), exist_ok=True)
            shutil.copy2(os.path.join(root, name), os.path.join(out, relative))
            copied.append(relative)
    return copied


def export(
    checkpoint: str,
    out: str,
    step: int | None = None,
    tokenizer_dir: str | None = None,
    dtype: str = "float32",
    shard_size: str = "5GB",
    image_token: int = -1,
    fmt: str = "auto",
    merge_lora: bool = False,
    base_model: str | None = None,
) -> str:
    """Write the HF directory (or, for a LoRA model without `merge_lora`, the peft adapter
    directory); returns a one-line summary. Raises ValueError/OSError on bad input before
    anything is written."""
    shard_bytes = parse_size(shard_size)
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"--out {out} is not empty")
    config, params, described, trained = load_source(checkpoint, step)
    if fmt == "auto":
        fmt = "instructblip" if config.instruction_aware else "blip2"
    if config.lora.rank > 0 and not merge_lora:
        return _export_adapter(config, params, described, trained, out, fmt, dtype, base_model)
    if config.lora.rank > 0:
        params, config = lora.merge(params, config.lora), lora.without(config)
        described += ", LoRA merged"
    elif merge_lora:
        raise ValueError(f"--merge_lora: {described} has no LoRA (config.model.lora.rank is 0)")
    saved = api.saved_image_token_index(checkpoint)  # kept by `ib_jax.convert --hf`
    image_token = saved if image_token < 0 and saved is not None else image_token
    index = image_token_index(image_token, tokenizer_dir, config)
    leaves = export_lib.unscanned_leaves(params, config.scan_layers)
    tensors = export_lib.plan_export(config, leaves, fmt)
    hf = export_lib.hf_config(config, fmt, index, dtype)
    os.makedirs(out, exist_ok=True)
    copied = copy_tokenizer(tokenizer_dir, out) if tokenizer_dir else []
    stats = export_lib.write_safetensors(out, tensors, dtype, shard_bytes)
    with open(os.path.join(out, "config.json"), "w") as f:  # last: a complete directory
        json.dump(hf, f, indent=2)
    return (
        f"wrote {out} ({hf['architectures'][0]}, from {described}): {stats.tensors} tensors, "
        f"{stats.total_bytes / 2**20:,.1f} MiB {dtype} in {len(stats.shards)} shard(s), "
        f"largest tensor {stats.max_tensor_bytes / 2**20:,.1f} MiB, image_token_index {index}"
        + (f", {len(copied)} processor/tokenizer files" if copied else "")
    )


def _export_adapter(config, params, described, trained, out, fmt, dtype, base_model) -> str:
    """The LoRA pairs (and modules_to_save) as a peft adapter directory; a one-line summary."""
    leaves = export_lib.unscanned_leaves(params, config.scan_layers)
    tensors, adapter = export_lib.plan_adapter(config, leaves, fmt, trained)
    adapter["base_model_name_or_path"] = base_model
    os.makedirs(out, exist_ok=True)
    stats = export_lib.write_adapter(out, tensors, adapter, dtype)
    return (
        f"wrote peft adapter {out} (from {described}): {len(adapter['target_modules'])} LoRA "
        f"modules, r={adapter['r']}, {len(adapter['modules_to_save'] or [])} modules_to_save, "
        f"{stats.tensors} tensors, {stats.total_bytes / 2**20:,.1f} MiB {dtype}"
    )


def run(fv: flags.FlagValues) -> int:
    """Export as the parsed flags say; returns the exit status."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    if not fv.checkpoint or not fv.out:
        raise app.UsageError("--checkpoint and --out are required")
    try:
        print(
            export(
                fv.checkpoint,
                fv.out,
                fv.step,
                fv.tokenizer_dir,
                fv.dtype,
                fv.shard_size,
                fv.image_token_index,
                fv.format,
                fv.merge_lora,
                fv.base_model,
            )
        )
    except (ValueError, OSError) as err:  # bad input: one message, no traceback
        print(f"export refused: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (without the program name) into a fresh flag set and run (for tests)."""
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["ib_jax.export", *(sys.argv[1:] if argv is None else argv)])
    return run(fv)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: sys.exit(run(flags.FLAGS)))
