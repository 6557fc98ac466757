"""A tiny InstructBLIP-T5 on the demo data, for tests: seconds per step on one CPU core."""

import ml_collections

from configs import common, data_demo, evals


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg` goes to the demo data config (e.g. `root=DIR` for where its data is rendered)."""
    config = ml_collections.ConfigDict()
    config.model = common.model(
        vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_layers=2,
            num_heads=4,
            image_size=32,
            patch_size=8,
        ),
        qformer=dict(
            vocab_size=288,
            hidden_size=32,
            intermediate_size=64,
            num_layers=2,
            num_heads=4,
            max_position_embeddings=64,
            cross_attention_frequency=1,
            encoder_hidden_size=32,
        ),
        text=dict(
            common.FLAN_T5,
            vocab_size=288,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
        ),
        num_query_tokens=4,
        dtype="float32",
        scan_layers=False,
        remat_policy="none",
    )
    config.init = common.init()
    config.data = data_demo.get_config(arg, num_train=64, num_eval=16)  # short test runs
    config.data.image_size = 32
    config.data.global_batch_size = 8
    config.data.qformer_max_len = 24
    config.data.text_max_len = 24
    config.data.target_max_len = 12
    config.data.prefetch_batches = 0
    config.mesh = common.mesh(data=-1)
    config.train = common.train(
        num_steps=6,
        warmup_steps=2,
        learning_rate=1e-3,
        weight_decay=0.01,
        log_every=1,
        frozen_dtype="float32",
    )
    config.checkpoint = common.checkpoint(every_steps=3, keep=5, async_save=True)
    config.eval = common.eval_job(batch_size=8)
    config.evals = evals.declare(["demo_vqa"])
    return config
