"""The embedded demo: a tiny InstructBLIP-T5 trained from scratch on rendered scenes, on CPU.

`make demo` runs it: held-out short-answer accuracy rises from chance to >= 80% (measured: VQA
accuracy 0.887, multiple choice 0.893 after 2,000 steps of 24 examples; README), and the held-out scores
are printed at the end.
"""

import ml_collections

from configs import common, data_demo, evals


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = common.model(
        vision=dict(
            hidden_size=96,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            image_size=64,
            patch_size=8,
        ),
        qformer=dict(
            vocab_size=288,
            hidden_size=96,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            max_position_embeddings=64,
            cross_attention_frequency=1,
            encoder_hidden_size=96,
        ),
        text=dict(
            common.FLAN_T5,
            vocab_size=288,
            d_model=96,
            d_kv=24,
            d_ff=192,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
        ),
        num_query_tokens=8,
        dtype="float32",
        scan_layers=False,
        remat_policy="none",
    )
    config.init = common.init()
    config.data = data_demo.get_config(arg)
    config.data.global_batch_size = 24
    config.mesh = common.mesh(data=-1)
    # From random initialisation everything trains; the released models train the Q-Former only.
    config.train = common.train(
        num_steps=2000,
        warmup_steps=50,
        learning_rate=1e-3,
        end_learning_rate=1e-5,
        weight_decay=0.01,
        grad_clip_norm=1.0,
        trainable=[r".*"],
        frozen_dtype="float32",
        log_every=50,
    )
    config.checkpoint = common.checkpoint(every_steps=400, keep=2)
    config.eval = common.eval_job(batch_size=32, after_training=True)
    config.evals = evals.declare(["demo_vqa", "demo_mc", "demo_caption"])
    return config
