"""Parameter counts of the released architectures (our configs/) equal HF InstructBLIP's, per tower.

The HF side is written out here from the released models' published configurations and built on
PyTorch's meta device (shapes only, nothing allocated); ours comes from `--describe` (shapes only).
"""

import pytest
import torch

from ib_jax.configs_util import load_config, model_config
from ib_jax.convert.__main__ import describe

# Needs the PyTorch reference (torch + transformers): the reference CI lane only.
pytestmark = pytest.mark.reference

QFORMER = dict(vocab_size=30523)  # BERT-base + the [DEC] token; the rest are HF's defaults
FLAN_T5 = dict(
    model_type="t5",
    vocab_size=32128,
    d_kv=64,
    num_layers=24,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)
VICUNA = dict(model_type="llama", vocab_size=32001, tie_word_embeddings=False)
RELEASED = {
    "instructblip_flant5xl": dict(FLAN_T5, d_model=2048, d_ff=5120, num_heads=32),
    "instructblip_flant5xxl": dict(FLAN_T5, d_model=4096, d_ff=10240, num_heads=64),
    "instructblip_vicuna7b": dict(
        VICUNA,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
    ),
    "instructblip_vicuna13b": dict(
        VICUNA,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
    ),
}


def _hf_counts(text_config: dict) -> dict[str, int]:
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

    config = InstructBlipConfig(
        vision_config={}, qformer_config=QFORMER, text_config=text_config, num_query_tokens=32
    )
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(config)
        lm = model.language_model
        # transformers 5 always ties T5's head to the embedding (T5Config turns `tie_word_embeddings:
        # false` into "no output scaling"); the released FlanT5 (T5 v1.1) files carry their own head.
        if lm.lm_head.weight is lm.get_input_embeddings().weight:
            lm.lm_head.weight = torch.nn.Parameter(torch.empty_like(lm.lm_head.weight))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731 (tied weights once)
    return {
        "vision": count(model.vision_model),
        "qformer": count(model.qformer) + model.query_tokens.numel(),
        "language_projection": count(model.language_projection),
        "language_model": count(model.language_model),
        "total": count(model),
    }


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_parameter_count_matches_hf(name):
    ours = describe(model_config(load_config(f"configs/{name}.py")))
    assert ours == _hf_counts(RELEASED[name])
