"""The batch contract between the data pipelines and the model (see docs/CONTRACTS.md).

Every training batch is a dict of fixed-shape arrays with exactly `TRAIN_KEYS`; every evaluation
batch carries `MODEL_INPUTS` (and metadata the evaluators read). Shapes, with B the batch size:

    pixel_values            [B, H, W, 3] float32 (CLIP-normalized), or [B, F, H, W, 3] for video
    qformer_input_ids       [B, Lq] int32   BERT WordPiece ids of the instruction
    qformer_attention_mask  [B, Lq] int32   1 on tokens, 0 on padding
    input_ids               [B, Li] int32   LM ids of the instruction (encoder input for T5)
    attention_mask          [B, Li] int32
    labels                  [B, Lt] int32   LM target ids; -100 (IGNORE_INDEX) where no loss is taken
"""

from __future__ import annotations

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and so the reference) ignores

# What the model's forward pass reads; generation and ranking read these too.
MODEL_INPUTS = (
    "pixel_values",
    "qformer_input_ids",
    "qformer_attention_mask",
    "input_ids",
    "attention_mask",
)
# What a training batch holds: the model inputs plus the targets.
TRAIN_KEYS = (*MODEL_INPUTS, "labels")
