"""python -m ib_jax.export against the reference: HF -> convert -> export is bit-identical, and a
checkpoint trained here loads in transformers (without ib_jax) with ib_jax's logits."""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_pipelines import demo_data
from ib_jax import checkpoint
from ib_jax.configs_util import load_config
from ib_jax.contract.model import from_config_dict
from ib_jax.convert import api
from ib_jax.convert.__main__ import main as convert_main
from ib_jax.convert.hf_config import model_config_from_hf
from ib_jax.export import main as export_main
from ib_jax.models.instructblip import InstructBlip
from tests import reference

pytestmark = pytest.mark.reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exported_state(directory: str) -> dict[str, torch.Tensor]:
    with open(os.path.join(directory, "model.safetensors.index.json")) as f:
        index = json.load(f)
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(os.path.join(directory, shard)))
    assert set(state) == set(index["weight_map"])
    return state


@pytest.fixture(scope="module", params=["t5", "llama"])
def hf_dir(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"hf_{request.param}")
    reference.build(request.param, seed=3).save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_round_trip_is_bit_identical(hf_dir, tmp_path, scan):
    converted, exported = str(tmp_path / "converted"), str(tmp_path / "exported")
    assert convert_main(["--hf", hf_dir, "--out", converted] + (["--scan_layers"] * scan)) == 0
    # A small shard size: several shards and their index.
    assert (
        export_main(
            ["--checkpoint", converted, "--out", exported, "--image_token_index=127"]
            + ["--shard_size=64KB"]
        )
        == 0
    )
    original = load_file(os.path.join(hf_dir, "model.safetensors"))
    state = _exported_state(exported)
    assert len([n for n in os.listdir(exported) if n.endswith(".safetensors")]) > 3  # sharded
    assert set(state) == set(original)
    for key, tensor in original.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_config = json.load(f)
    with open(os.path.join(exported, "config.json")) as f:
        exported_config = json.load(f)
    assert model_config_from_hf(exported_config) == model_config_from_hf(hf_config)
    assert exported_config["image_token_index"] == hf_config["image_token_index"]


def test_bfloat16_export_rounds_each_tensor(hf_dir, tmp_path):
    converted, exported = str(tmp_path / "converted"), str(tmp_path / "exported")
    assert convert_main(["--hf", hf_dir, "--out", converted]) == 0
    argv = ["--checkpoint", converted, "--out", exported, "--image_token_index=5"]
    assert export_main(argv + ["--dtype=bfloat16"]) == 0
    original = load_file(os.path.join(hf_dir, "model.safetensors"))
    for key, tensor in _exported_state(exported).items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, original[key].to(torch.bfloat16)), key


# -- a checkpoint trained here --------------------------------------------------------------------

_HF_SCRIPT = """
import json, sys
import numpy as np, torch
import transformers

directory, inputs, out = sys.argv[1:4]
with open(directory + "/config.json") as f:
    cls = getattr(transformers, json.load(f)["architectures"][0])
model = cls.from_pretrained(directory, attn_implementation="eager").eval()
batch = {k: torch.from_numpy(v) for k, v in np.load(inputs).items()}
with torch.no_grad():
    output = model(**batch)
np.savez(out, logits=output.logits.float().numpy(), loss=output.loss.float().numpy())
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("ib_jax", "data_pipelines", "tests"))
print(json.dumps({"leaked": leaked, "dtype": str(model.dtype)}))
"""


def _train(tmp_path, instruction_aware: bool) -> str:
    """Three steps of configs/tiny.py, frozen towers stored in bf16; returns the workdir."""
    from ib_jax.train import trainer

    root = str(tmp_path / "data")
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={root}"))
    config.unlock()
    config.model.instruction_aware = instruction_aware
    config.train.num_steps = 3
    config.train.frozen_dtype = "bfloat16"
    demo_data.ensure_from_config(config.data)
    workdir = str(tmp_path / "workdir")
    trainer.train(config, workdir)
    return workdir


@pytest.mark.parametrize(
    "instruction_aware", [True, False], ids=["instructblip", "blip2_stage2_style"]
)
def test_trained_checkpoint_gives_ib_jax_logits_in_transformers(tmp_path, instruction_aware):
    workdir = _train(tmp_path, instruction_aware)
    step, params, saved = checkpoint.restore_params(workdir)
    assert step == 3
    frozen = params["language_model"]["shared"]["embedding"]
    assert frozen.dtype == jnp.bfloat16  # the export must widen it to the asked dtype
    config = from_config_dict(saved["model"])

    exported = str(tmp_path / "exported")
    argv = ["--checkpoint", workdir, "--out", exported, "--image_token_index=127"]
    assert export_main(argv) == 0

    batch = reference.inputs(seed=4, image_size=config.vision.image_size)
    hf_batch = {k: v.numpy() for k, v in reference.to_hf(batch).items()}
    if not instruction_aware:  # BLIP-2: no instruction into the Q-Former
        batch.update(qformer_input_ids=None, qformer_attention_mask=None)
        del hf_batch["qformer_input_ids"], hf_batch["qformer_attention_mask"]
    ours = InstructBlip(config).apply(
        {"params": params}, **{k: None if v is None else jnp.asarray(v) for k, v in batch.items()}
    )
    np.savez(tmp_path / "inputs.npz", **hf_batch)
    # A fresh interpreter outside the repository: nothing of ib_jax can be imported by accident.
    result = subprocess.run(
        [sys.executable, "-c", _HF_SCRIPT, exported, str(tmp_path / "inputs.npz"), "hf.npz"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"leaked": [], "dtype": "torch.float32"}
    hf = np.load(tmp_path / "hf.npz")
    np.testing.assert_allclose(hf["logits"], np.asarray(ours.logits), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(hf["loss"]), float(ours.loss), atol=1e-4, rtol=1e-5)
    with open(os.path.join(exported, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    assert architecture == (
        "InstructBlipForConditionalGeneration"
        if instruction_aware
        else "Blip2ForConditionalGeneration"
    )


# -- tokenizer files and refusals -----------------------------------------------------------------


@pytest.fixture(scope="module")
def converted_t5(tmp_path_factory):
    """A converted tiny HF model without the HF config's image_token_index (hf_extras.json),
    as a converted directory of an older version or of LAVIS weights has it: export must then
    learn the image token from --tokenizer_dir or the flag."""
    directory = tmp_path_factory.mktemp("hf_t5_small")
    reference.build("t5", seed=4).save_pretrained(directory)
    out = str(tmp_path_factory.mktemp("converted") / "t5")
    assert convert_main(["--hf", str(directory), "--out", out]) == 0
    os.remove(os.path.join(out, api.HF_EXTRAS))
    return out


def test_tokenizer_files_are_copied_and_name_the_image_token(converted_t5, tmp_path):
    tokenizer = tmp_path / "processor"
    (tokenizer / "qformer_tokenizer").mkdir(parents=True)
    added = {"added_tokens_decoder": {"126": {"content": "<image>", "special": True}}}
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(added))
    (tokenizer / "qformer_tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (tokenizer / "processor_config.json").write_text(json.dumps({"num_query_tokens": 4}))
    (tokenizer / "model.safetensors").write_bytes(b"not copied")
    exported = tmp_path / "exported"
    argv = ["--checkpoint", converted_t5, "--out", str(exported), "--tokenizer_dir", str(tokenizer)]
    assert export_main(argv) == 0
    for name in ("tokenizer_config.json", "qformer_tokenizer/vocab.txt", "processor_config.json"):
        assert (exported / name).read_bytes() == (tokenizer / name).read_bytes()
    assert not (exported / "model.safetensors").exists()
    assert json.loads((exported / "config.json").read_text())["image_token_index"] == 126


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], r"no row of the 128-row LM vocabulary is known to be free"),
        (["--image_token_index=128"], r"id 128 is not a row of the 128-row LM vocabulary"),
        (["--image_token_index=1", "--format=blip2"], r"Blip2ForConditionalGeneration has no"),
        (["--image_token_index=1", "--shard_size=lots"], r"--shard_size 'lots'"),
        (["--image_token_index=1", "--step=2"], r"converted directory, which has no steps"),
    ],
)
def test_bad_input_is_refused_with_one_message(converted_t5, tmp_path, capsys, argv, message):
    out = str(tmp_path / "exported")
    assert export_main(["--checkpoint", converted_t5, "--out", out, *argv]) == 1
    error = capsys.readouterr().err
    assert error.startswith("export refused:") and len(error.strip().splitlines()) == 1
    assert re.search(message, error), error
    assert not os.path.exists(os.path.join(out, "config.json"))


def test_unknown_checkpoint_is_named(tmp_path, capsys):
    assert export_main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert f"--checkpoint {tmp_path}: neither a training workdir" in capsys.readouterr().err


def test_scanned_leaves_are_read_one_layer_at_a_time():
    from ib_jax.convert.export import unscanned_leaves

    stacked = jnp.arange(24.0).reshape(3, 2, 4)
    leaves = unscanned_leaves({"vision": {"layers": {"fc": {"kernel": stacked}}}}, scanned=True)
    assert sorted(leaves) == [f"vision/layers_{i}/fc/kernel" for i in range(3)]
    leaf = leaves["vision/layers_1/fc/kernel"]
    assert leaf.shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(leaf.read()), np.asarray(stacked[1]))


def test_tied_unscaled_t5_head_is_written_out(tmp_path):
    """A headless T5 without output scaling (transformers 5's save of FlanT5 with tied weights)
    exports an lm_head of its own: transformers 4 would otherwise scale the tied logits."""
    from safetensors.torch import save_file
    from transformers import InstructBlipForConditionalGeneration

    source = tmp_path / "tied"
    reference.build("t5", seed=6).save_pretrained(source)
    state = load_file(str(source / "model.safetensors"))
    del state["language_model.lm_head.weight"]
    save_file(state, str(source / "model.safetensors"), metadata={"format": "pt"})
    hf_config = json.loads((source / "config.json").read_text())
    hf_config["text_config"].update(tie_word_embeddings=True, scale_decoder_outputs=False)
    (source / "config.json").write_text(json.dumps(hf_config))

    converted, exported = str(tmp_path / "converted"), str(tmp_path / "exported")
    assert convert_main(["--hf", str(source), "--out", converted]) == 0
    assert (
        export_main(["--checkpoint", converted, "--out", exported, "--image_token_index=127"]) == 0
    )
    written = _exported_state(exported)
    head = written["language_model.lm_head.weight"]
    assert torch.equal(head, state["language_model.shared.weight"])
    text = json.loads(open(os.path.join(exported, "config.json")).read())["text_config"]
    assert text["tie_word_embeddings"] is False and text["scale_decoder_outputs"] is False

    batch = reference.to_hf(reference.inputs(seed=7))
    logits = []
    for directory in (str(source), exported):
        model = InstructBlipForConditionalGeneration.from_pretrained(directory).eval()
        with torch.no_grad():
            logits.append(model(**batch).logits)
    assert torch.equal(logits[0], logits[1])
