"""`python -m ib_jax.convert --hf` keeps the HF config's `image_token_index` beside the converted
checkpoint, so `python -m ib_jax.export` of the result needs no `--image_token_index` (a Vicuna
vocabulary has no spare row to default to)."""

import json
import os

import pytest

from ib_jax.convert import api
from ib_jax.convert.__main__ import main as convert_main
from ib_jax.export import main as export_main

pytestmark = pytest.mark.reference


def test_convert_keeps_image_token_index_and_export_gives_it_back(tmp_path):
    from tests import reference

    hf_dir, converted, exported = (str(tmp_path / n) for n in ("hf", "converted", "exported"))
    reference.build("llama", seed=3).save_pretrained(hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as f:
        original = json.load(f)["image_token_index"]
    assert convert_main(["--hf", hf_dir, "--out", converted]) == 0
    assert api.saved_image_token_index(converted) == original
    assert export_main(["--checkpoint", converted, "--out", exported]) == 0  # no id given
    with open(os.path.join(exported, "config.json")) as f:
        assert json.load(f)["image_token_index"] == original
