"""The embedded demo with a Vicuna-style language model: a tiny InstructBLIP-LLaMA trained from
scratch on the rendered scenes, on CPU.

`python -m ib_jax.train --config=configs/demo_vicuna.py --workdir=workdirs/demo_vicuna` trains
and evaluates like `make demo` (configs/demo.py), with the decoder-only LM and its text
conventions: `</s>` as BOS before the instruction, no EOS after it, `[PAD]` added after the
demo SentencePiece model's pieces (data_pipelines/text.py, as LAVIS tokenizes for Vicuna).

Measured 2026-12-05 (1,200 steps of 24, held-out images): VQA accuracy 0.977, multiple choice
0.973, CIDEr 6.33; 4 min 20 s on the quiet 2-core machine (README, "The demo, measured").
"""

import ml_collections
import sentencepiece

from configs import common, demo
from data_pipelines import demo_data


def tiny_llama(spm_path: str) -> dict:
    """A LLaMA decoder about as large as the demo's T5 (96 wide, 4 layers), with the token ids of
    the demo SentencePiece model laid out as for Vicuna: BOS = EOS = `</s>`, [PAD] = #pieces."""
    pieces = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    end = pieces.PieceToId("</s>")
    return dict(
        vocab_size=288,  # >= #pieces + 1 ([PAD]); the tokenizer checks it at evaluation
        hidden_size=96,
        intermediate_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=128,  # 8 queries + 48 instruction + 24 target slots
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=pieces.GetPieceSize(),
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` goes to the demo data config (data_demo: `root=...,num_train=...`)."""
    config = demo.get_config(arg)
    model = config.model.to_dict()
    model.update(lm_type="llama", text=tiny_llama(demo_data.DEMO_SPM))
    config.model = common.model(**model)
    # The LM tokenizer follows the model's family (a --config.model.lm_type override carries over).
    config.data.lm_type = config.model.get_ref("lm_type")
    # The decoder-only demo learns faster than the T5 one (held-out VQA 0.99 after 2,000 steps,
    # 0.957 after 1,200), and a step costs 1.5x: 1,200 steps keep the run within 10 minutes.
    config.train.num_steps = 1200
    return config
