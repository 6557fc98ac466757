"""Conversion in bounded memory: lazy reading, group-by-group writing, the same result as before.

The streamed directory must load exactly as an in-memory conversion (both layouts, safetensors and
sharded .bin), the writer must hand over pieces no larger than its budget plus one group, and a
conversion's resident memory must stay well under the checkpoint's size (measured in a child
process from the kernel's high-water mark, reset after start-up).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch

import ib_jax
from ib_jax.convert import api, core, readers, write
from tests import reference

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """The same tiny model as model.safetensors and as two .bin shards with an index."""
    root = tmp_path_factory.mktemp("memory")
    model = reference.build("t5", seed=3)
    model.save_pretrained(root / "safetensors")
    state = model.state_dict()
    keys = list(state)
    (root / "bin").mkdir()
    (root / "bin" / "config.json").write_text((root / "safetensors" / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k].clone() for k in part}, root / "bin" / name)
        weight_map.update(dict.fromkeys(part, name))
    (root / "bin" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    return str(root / "safetensors"), str(root / "bin")


def _equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_streamed_directory_equals_the_in_memory_conversion(hf_dirs, tmp_path, scan):
    safetensors_dir, bin_dir = hf_dirs
    config, params, _ = api.convert_hf(safetensors_dir, scan_layers=scan)
    # The layout the old converter produced: everything read, converted, then stacked.
    unscanned = api.convert_hf(safetensors_dir)[1]
    _equal(params, core.stack_scanned(unscanned) if scan else unscanned)
    for source in (safetensors_dir, bin_dir):
        out = str(tmp_path / os.path.basename(source))
        stats = api.write_converted(out, api.plan_hf(source, scan_layers=scan), flush_bytes=4096)
        assert stats.pieces > 1
        model, restored = ib_jax.load_pretrained(out)
        assert model.config == config
        assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(restored))
        _equal(restored, params)
        assert readers._TorchFiles.path is None  # no .bin shard left mapped
    assert sorted(os.listdir(tmp_path)) == ["bin", "safetensors"]  # no session left behind


def test_pieces_stay_within_budget_plus_one_group(hf_dirs):
    safetensors_dir, _ = hf_dirs
    for scan in (False, True):
        plan = api.plan_hf(safetensors_dir, scan_layers=scan)
        pieces = []
        stats = write.write(plan, scan, pieces.append, flush_bytes=8192)
        sizes = [sum(x.nbytes for x in jax.tree_util.tree_leaves(p)) for p in pieces]
        assert max(sizes) == stats.max_piece_bytes <= 8192 + stats.max_unit_bytes
        assert sum(sizes) == stats.total_bytes
        # Disjoint pieces that together are the whole tree.
        paths = [p for piece in pieces for p in _flat(piece)]
        assert len(paths) == len(set(paths)) == len(jax.tree_util.tree_leaves(api.to_memory(plan)))
        units = write.units(plan, scan)
        if scan:  # a scanned unit is one stacked parameter of all layers
            stacked = [u for u in units if "/layers/" in next(iter(u))]
            assert stacked and all(len(u) == 1 for u in stacked)
            assert {len(m) for u in stacked for m in u.values()} == {2}
        else:  # an unscanned unit is one layer
            assert any(next(iter(u)).startswith("vision/layers_1/") for u in units)


def _flat(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}/")
        else:
            yield prefix + key


def test_bad_input_stops_before_anything_is_written(hf_dirs, tmp_path):
    from safetensors.numpy import load_file, save_file

    safetensors_dir, _ = hf_dirs
    state = load_file(os.path.join(safetensors_dir, "model.safetensors"))
    state["language_projection.weight"] = state["language_projection.weight"][:, :16]
    (tmp_path / "bad").mkdir()
    save_file(state, str(tmp_path / "bad" / "model.safetensors"))
    config_json = os.path.join(safetensors_dir, "config.json")
    (tmp_path / "bad" / "config.json").write_text(open(config_json).read())
    from ib_jax.convert.__main__ import main

    assert main(["--hf", str(tmp_path / "bad"), "--out", str(tmp_path / "out")]) == 1
    assert not os.path.exists(tmp_path / "out")


_CHILD = textwrap.dedent(
    """
    import sys
    from ib_jax.convert import api

    def rss(field):
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                    if line.startswith(field))

    plan = api.plan_hf(sys.argv[1], scan_layers=True)
    api.write_converted(sys.argv[2] + "_warm", plan, flush_bytes=4 * 2**20)  # imports, pools
    start = rss("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    api.write_converted(sys.argv[2], plan, flush_bytes=4 * 2**20)
    print(rss("VmHWM:") - start)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_streaming_holds_far_less_than_the_checkpoint(tmp_path):
    """~120 MB of weights, groups of at most 16 MB: the write's resident growth stays under half
    of the checkpoint (the converter this replaced held about 3x the checkpoint)."""
    from transformers import InstructBlipForConditionalGeneration

    text = dict(vocab_size=4096, d_model=512, d_kv=64, num_heads=8, d_ff=1024)
    config = reference.tiny_config("t5", **text)
    vision = dict(
        hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8
    )
    config.vision_config.update(vision)
    config.qformer_config.update(dict(encoder_hidden_size=512))
    model = InstructBlipForConditionalGeneration(config)
    model.save_pretrained(tmp_path / "hf")
    size = os.path.getsize(tmp_path / "hf" / "model.safetensors")
    assert size > 100e6
    del model
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "hf"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    growth = int(result.stdout.split()[-1])
    print(f"resident growth {growth / 1e6:.1f} MB for {size / 1e6:.1f} MB")
    assert growth < 0.5 * size, f"{growth / 1e6:.0f} MB resident growth for {size / 1e6:.0f} MB"
