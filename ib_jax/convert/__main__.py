"""python -m ib_jax.convert: PyTorch checkpoints -> a converted directory (config.json + Orbax params/).

  python -m ib_jax.convert --hf=DIR --out=OUT [--scan_layers] [--remat_policy=dots]
  python -m ib_jax.convert --hf=DIR --peft=ADAPTER_DIR --out=OUT   (a peft LoRA adapter on top)
  python -m ib_jax.convert --lavis=instruct_blip_flanxl_trimmed.pth --vit=eva_vit_g.pth \\
      --language_model=flan-t5-xl/ --config=configs/instructblip_flant5xl.py --out=OUT
  python -m ib_jax.convert --blip2=blip2-flan-t5-xl/ --bert=bert-base-uncased/ --out=OUT
  python -m ib_jax.convert --blip2=blip2_pretrained_flant5xl.pth --bert=bert-base-uncased/ \\
      --vit=eva_vit_g.pth --language_model=flan-t5-xl/ --config=configs/instructblip_flant5xl.py --out=OUT
  python -m ib_jax.convert --blip2=blip2_pretrained.pth --vit=eva_vit_g.pth \\
      --language_model=vicuna-7b/ --config=configs/instructblip_vicuna7b.py --seed=0 --out=OUT
  python -m ib_jax.convert --describe=configs/instructblip_flant5xl.py   (every parameter path, its
      shape and count, trainable or not; then the counts per tower)

Conversion streams: tensors are read one layer group at a time and written to Orbax piece by
piece, so memory stays near the largest `.bin`/`.pth` shard plus one layer group.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

from absl import app, flags
from flax import traverse_util
from ml_collections import config_flags

from ib_jax.configs_util import load_config, model_config
from ib_jax.convert import api, blip2, peft
from ib_jax.convert.core import abstract_params, stacked_name
from ib_jax.models import lora
from ib_jax.train.state import is_trainable

_SOURCES = ("hf", "lavis", "blip2", "describe")


def define_flags(flag_values: flags.FlagValues) -> None:
    """The command line, defined into `flag_values` (absl's global FLAGS when run as a program)."""
    fv = dict(flag_values=flag_values)
    flags.DEFINE_string(
        "hf", None, "Hugging Face InstructBLIP directory (config.json + weights)", **fv
    )
    flags.DEFINE_string("lavis", None, "LAVIS InstructBLIP state dict (.pth)", **fv)
    flags.DEFINE_string(
        "blip2",
        None,
        "BLIP-2 to start instruction tuning from: an HF Blip2ForConditionalGeneration directory, "
        "a LAVIS blip2_t5 stage-2 state dict, or a LAVIS stage-1 Q-Former checkpoint",
        **fv,
    )
    flags.DEFINE_string(
        "describe",
        None,
        "list every parameter of a config file's model (path, shape, count, trainable or not) "
        "and the counts per tower",
        **fv,
    )
    flags.DEFINE_string(
        "peft",
        None,
        "with --hf: a peft LoRA adapter directory (adapter_config.json + "
        "adapter_model.safetensors) to read onto the base model",
        **fv,
    )
    flags.DEFINE_string("bert", None, "BERT directory for the Q-Former's text side (--blip2)", **fv)
    flags.DEFINE_string("vit", None, "EVA ViT-g state dict for trimmed LAVIS files", **fv)
    flags.DEFINE_string(
        "language_model", None, "HF T5/Vicuna directory or file for trimmed LAVIS files", **fv
    )
    config_flags.DEFINE_config_file(
        "config",
        None,
        "configs/*.py file; its config.model names the architecture (--lavis, LAVIS --blip2)",
        lock_config=False,
        **fv,
    )
    flags.DEFINE_string("out", None, "output directory (must not hold a checkpoint yet)", **fv)
    flags.DEFINE_bool("scan_layers", False, "write the scanned layout", **fv)
    flags.DEFINE_string("remat_policy", "none", "remat policy stored in the written config", **fv)
    flags.DEFINE_integer(
        "seed", 0, "--blip2: seed of the fresh tensors ([DEC] row, stage-1 projection)", **fv
    )


def describe(config) -> dict[str, int]:
    """Parameter count per tower (from shapes only; nothing is allocated)."""
    counts: dict[str, int] = {}
    for path, shape in parameter_shapes(config).items():
        tower = path.split("/")[0]
        counts[tower] = counts.get(tower, 0) + math.prod(shape)
    counts["total"] = sum(counts.values())
    return counts


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """{"/"-joined parameter path: shape} of the model `config` describes, in its own layout
    (scanned stacks have one path with a leading layer axis), LoRA leaves included."""
    flat = traverse_util.flatten_dict(abstract_params(config), sep="/")
    shapes = {path: tuple(x.shape) for path, x in flat.items()}
    if config.scan_layers:
        stacked: dict[str, tuple[int, ...]] = {}
        for path, shape in shapes.items():
            found = stacked_name(path)
            name = found[0] if found else path
            depth = stacked.get(name, (0,))[0] + 1 if found else None
            stacked[name] = (depth, *shape) if found else shape
        shapes = stacked
    return dict(sorted(shapes.items()))


def describe_paths(run_config) -> list[str]:
    """One line per parameter: path, shape, count and whether `config.train.trainable` (or
    LoRA) trains it; then the totals per tower."""
    train = run_config.get("train") if hasattr(run_config, "get") else None
    patterns = train.get("trainable", "") if train is not None else ""
    shapes = parameter_shapes(model_config(run_config))
    width = max(len(p) for p in shapes)
    lines = []
    for path, shape in shapes.items():
        trained = lora.is_lora_path(path) or is_trainable(path, patterns)
        lines.append(
            f"{path:{width}s} {str(list(shape)):>22s} {math.prod(shape):>15,d}"
            + ("  trainable" if trained else "")
        )
    return lines


def _model_config(config):
    return None if config is None else model_config(config)


def run(fv: flags.FlagValues) -> int:
    """Convert (or describe) as the parsed flags say; returns the exit status."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every partial save at INFO
    given = [name for name in _SOURCES if fv[name].value]
    if len(given) != 1:
        raise app.UsageError(
            f"give exactly one of --{', --'.join(_SOURCES)} (got {given or 'none'})"
        )
    if fv.describe:
        run_config = load_config(fv.describe)
        for line in describe_paths(run_config):
            print(line)
        for name, count in describe(model_config(run_config)).items():
            print(f"{name:24s} {count:>15,d}")
        return 0
    if not fv.out:
        raise app.UsageError("--out is required to convert")
    try:
        plan = _plan(fv)
        for kind, keys in plan.report.items():
            if keys:
                print(
                    f"{len(keys)} {kind} source keys (not converted): {', '.join(keys[:8])}"
                    + (" ..." if len(keys) > 8 else "")
                )
        if fv.blip2:
            print(blip2.summary(plan))
        stats = api.write_converted(fv.out, plan)
    except (ValueError, OSError) as err:  # bad input: one message, no traceback
        print(f"conversion refused: {err}", file=sys.stderr)
        return 1
    if fv.blip2:
        with open(os.path.join(fv.out, "provenance.json"), "w") as f:
            json.dump(blip2.provenance(plan), f, indent=2)
    layout_name = "scanned" if plan.config.scan_layers else "unscanned"
    print(
        f"wrote {fv.out} ({layout_name} layout, {stats.total_bytes / 2**20:,.0f} MiB in "
        f"{stats.pieces} pieces, largest group {stats.max_unit_bytes / 2**20:,.0f} MiB)"
    )
    return 0


def _plan(fv: flags.FlagValues):
    config = _model_config(fv.config)
    layout = dict(scan_layers=fv.scan_layers, remat_policy=fv.remat_policy)
    if fv.peft and not fv.hf:
        raise app.UsageError("--peft reads an adapter onto an HF base model: give --hf too")
    if fv.hf and fv.peft:
        return peft.plan_peft(fv.hf, fv.peft, **layout)
    if fv.hf:
        return api.plan_hf(fv.hf, **layout)
    if fv.lavis:
        if config is None:
            raise app.UsageError("--lavis needs --config (the architecture of the released model)")
        return api.plan_lavis(
            fv.lavis,
            dataclasses.replace(config, **layout),
            vit=fv.vit,
            language_model=fv.language_model,
        )
    return blip2.plan_blip2(fv.blip2, fv.bert, config, fv.vit, fv.language_model, fv.seed, **layout)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (without the program name) into a fresh flag set and run; for callers in
    Python (tests), so that these flags never collide with another program's."""
    fv = flags.FlagValues()
    define_flags(fv)
    fv(["ib_jax.convert", *(sys.argv[1:] if argv is None else argv)])
    return run(fv)


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    app.run(lambda argv: sys.exit(run(flags.FLAGS)))
