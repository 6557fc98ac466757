"""python -m ib_jax.convert: PyTorch InstructBLIP checkpoints -> an Orbax checkpoint + our config.

  python -m ib_jax.convert --hf DIR --out OUT [--scan_layers] [--remat_policy dots]
  python -m ib_jax.convert --lavis instruct_blip_flanxl_trimmed.pth --vit eva_vit_g.pth \\
      --language_model flan-t5-xl/ --config configs/instructblip_flant5xl.py --out OUT
  python -m ib_jax.convert --describe configs/instructblip_flant5xl.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ib_jax.convert import api


def _model_config(path: str):
    from ib_jax.configs_util import load_config, model_config

    return model_config(load_config(path))


def describe(config) -> dict[str, int]:
    """Parameter count per tower (from shapes only; nothing is allocated)."""
    import math

    import jax

    from ib_jax.convert.core import abstract_params

    shapes = abstract_params(config)
    counts = {
        name: sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
        for name, tree in shapes.items()
    }
    counts["total"] = sum(counts.values())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ib_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", help="Hugging Face InstructBLIP directory (config.json + weights)")
    source.add_argument("--lavis", help="LAVIS InstructBLIP state dict (.pth)")
    source.add_argument(
        "--describe", metavar="CONFIG", help="print parameter counts per tower of a config"
    )
    parser.add_argument("--vit", help="EVA ViT-g state dict for trimmed LAVIS files")
    parser.add_argument(
        "--language_model", help="HF T5/Vicuna directory or file for trimmed LAVIS files"
    )
    parser.add_argument(
        "--config", help="our config file (required with --lavis: it names the architecture)"
    )
    parser.add_argument("--out", help="output directory (must not exist yet)")
    parser.add_argument("--scan_layers", action="store_true", help="write the scanned layout")
    parser.add_argument("--remat_policy", default="none")
    args = parser.parse_args(argv)

    if args.describe:
        for name, count in describe(_model_config(args.describe)).items():
            print(f"{name:24s} {count:>15,d}")
        return 0
    if not args.out:
        parser.error("--out is required to convert")
    overrides = dict(scan_layers=args.scan_layers, remat_policy=args.remat_policy)
    if args.hf:
        config, params, report = api.convert_hf(args.hf, **overrides)
    else:
        if not args.config:
            parser.error("--lavis needs --config (the architecture of the released model)")
        config = dataclasses.replace(_model_config(args.config), **overrides)
        config, params, report = api.convert_lavis(
            args.lavis, config, vit=args.vit, language_model=args.language_model
        )
    for kind, keys in report.items():
        if keys:
            print(
                f"{len(keys)} {kind} source keys (not converted): {', '.join(keys[:8])}"
                + (" ..." if len(keys) > 8 else "")
            )
    api.save_converted(args.out, config, params)
    print(f"wrote {args.out} ({'scanned' if config.scan_layers else 'unscanned'} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
