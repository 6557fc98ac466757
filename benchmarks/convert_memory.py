"""Peak resident memory and time of `python -m ib_jax.convert` on a ~1.2 GB checkpoint.

  python -m benchmarks.convert_memory [--workdir=/tmp/ib_jax_convert_memory] [--baseline_rev=REV]

Builds (once) a synthetic HF InstructBLIP-FlanT5 directory of about 280M float32 parameters with
random weights (`model.safetensors`), then converts it in a child process per measurement
(`--hf ... --scan_layers`, the issue's case) and reads the child's peak RSS from `wait4`. Linux
carries a parent's peak RSS into a forked child's, so this process stays small: the checkpoint is
built in a child of its own, and nothing heavy is imported here. With
`--baseline_rev`, the same conversion runs from that git revision's `ib_jax/` (extracted with
`git archive`) for comparison. A floor (the interpreter with jax, orbax and torch imported and
the model's shapes traced, converting nothing) shows how much of the peak is the conversion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string(
    "workdir", os.path.join(tempfile.gettempdir(), "ib_jax_convert_memory"), "checkpoint cache"
)
_BASELINE = flags.DEFINE_string(
    "baseline_rev", None, "git revision whose converter to measure too (e.g. the one before)"
)
_SCAN = flags.DEFINE_bool("scan_layers", True, "convert to the scanned layout")
_FORMAT = flags.DEFINE_enum(
    "format",
    "safetensors",
    ["safetensors", "bin"],
    "weights file: model.safetensors or a "
    "pytorch_model.bin sharded in two (read with torch, one shard mapped at a time)",
)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ~280M parameters (1.1 GB): 8 ViT-L layers, a 6-layer BERT-base Q-Former, a small FlanT5.
_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=8,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
)
_QFORMER = dict(num_hidden_layers=6, encoder_hidden_size=1024, vocab_size=30523)
_TEXT = dict(
    model_type="t5",
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=1536,
    num_layers=6,
    num_decoder_layers=6,
    num_heads=8,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


def build_checkpoint(directory: str) -> int:
    """Write the synthetic HF directory (random N(0, 0.02^2) weights); returns its bytes."""
    path = os.path.join(directory, "model.safetensors")
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        import torch
        from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

        config = InstructBlipConfig(
            vision_config=_VISION, qformer_config=_QFORMER, text_config=_TEXT, num_query_tokens=32
        )
        model = InstructBlipForConditionalGeneration(config)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # random values: compression must not flatter the writer
            for param in model.parameters():
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
        model.save_pretrained(directory, max_shard_size="20GB")
        del model
    return os.path.getsize(path)


def build_bin_copy(source: str, directory: str) -> int:
    """The same weights as two `pytorch_model-0000N-of-00002.bin` shards with their index."""
    import json

    import torch
    from safetensors.torch import load_file

    state = load_file(os.path.join(source, "model.safetensors"))
    keys = list(state)
    os.makedirs(directory, exist_ok=True)
    shutil.copy(os.path.join(source, "config.json"), directory)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, os.path.join(directory, name))
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)
    return sum(os.path.getsize(os.path.join(directory, n)) for n in set(weight_map.values()))


def _measure(argv: list[str], source: str) -> tuple[float, float]:
    """(peak RSS in bytes, seconds) of `python argv` run with `source` first on the path."""
    env = dict(os.environ, PYTHONPATH=source, JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *argv], cwd=source, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} (from {source}) failed")
    return usage.ru_maxrss * 1024.0, seconds  # Linux reports KiB


_FLOOR = (
    "import jax, orbax.checkpoint{}\n"
    "from ib_jax.convert import core, hf_config\n"
    "config = hf_config.model_config_from_hf(hf_config.read_hf_config({!r}))\n"
    "core.abstract_params(config)\n"
)


def _convert(source: str, checkpoint: str, out: str) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    argv = ["-m", "ib_jax.convert", "--hf", checkpoint, "--out", out]
    try:
        return _measure(argv + (["--scan_layers"] if _SCAN.value else []), source)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _baseline_tree(rev: str, root: str) -> str:
    tree = os.path.join(root, f"baseline_{rev}")
    if not os.path.isdir(tree):
        os.makedirs(tree)
        archive = subprocess.run(
            ["git", "-C", _REPO, "archive", rev, "ib_jax"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def main(argv: list[str]) -> None:
    del argv
    root = _WORKDIR.value
    checkpoint = os.path.join(root, "instructblip_synthetic")
    builder = "from benchmarks.convert_memory import build_checkpoint, build_bin_copy\n"
    if not os.path.exists(os.path.join(checkpoint, "model.safetensors")):
        _measure(["-c", builder + f"build_checkpoint({checkpoint!r})"], _REPO)
    size = os.path.getsize(os.path.join(checkpoint, "model.safetensors"))
    if _FORMAT.value == "bin":
        source, checkpoint = checkpoint, checkpoint + "_bin"
        if not os.path.exists(os.path.join(checkpoint, "pytorch_model.bin.index.json")):
            _measure(["-c", builder + f"build_bin_copy({source!r}, {checkpoint!r})"], _REPO)
    out = os.path.join(root, "converted")
    # What a conversion imports besides: torch, to read .bin files only.
    floor = _FLOOR.format(", torch" if _FORMAT.value == "bin" else "", checkpoint)
    rows = [("floor (imports + shapes, no conversion)", *_measure(["-c", floor], _REPO))]
    if _BASELINE.value:
        tree = _baseline_tree(_BASELINE.value, root)
        rows.append((f"convert at {_BASELINE.value}", *_convert(tree, checkpoint, out)))
    rows.append(("convert (this tree)", *_convert(_REPO, checkpoint, out)))
    layout = "scanned" if _SCAN.value else "unscanned"
    print(f"checkpoint: {size / 1e9:.2f} GB of float32 weights as {_FORMAT.value}, {layout} output")
    print(f"{'run':44s} {'peak RSS':>10s} {'x ckpt':>7s} {'seconds':>8s}")
    for name, peak, seconds in rows:
        print(f"{name:44s} {peak / 1e9:9.2f}G {peak / size:7.2f} {seconds:8.1f}")


if __name__ == "__main__":
    app.run(main)
