"""LoRA on the embedded demo: the language model's and the Q-Former's attention (and the T5 MLPs)
adapted with rank-8 pairs, everything else frozen (issue 23's evidence).

It starts from a demo run (`init=WORKDIR`, e.g. a short `configs/demo.py` run) and trains the
LoRA parameters alone; the held-out scores are printed at the end, as for the demo:

  python -m ib_jax.train --config=configs/demo.py --workdir=workdirs/demo_base \\
      --config.train.num_steps=300 --config.checkpoint.every_steps=300
  python -m ib_jax.train --config=configs/demo_lora.py:init=workdirs/demo_base \\
      --workdir=workdirs/demo_lora

Options (`:`-separated after the file name, comma-joined): `init=` the run to start from (any
`config.init.pretrained`: a training workdir, a converted or HF directory), `root=` the demo
data's directory.
"""

import ml_collections

from configs import demo

# T5's self- and cross-attention q/v and MLP output, the Q-Former's self- and cross-attention
# query/value (peft's usual q/v choice; `python -m ib_jax.convert --describe=` lists the paths).
TARGETS = r"language_model/.*/(q|v|wo)$,^qformer/.*attention/(query|value)$"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = dict(item.split("=", 1) for item in (arg or "").split(",") if item)
    init = options.pop("init", "")
    data_arg = ",".join(f"{k}={v}" for k, v in options.items()) or None
    config = demo.get_config(data_arg)
    config.init.pretrained = init
    config.model.lora.update(dict(rank=8, alpha=16.0, targets=TARGETS))
    config.train.trainable = ""  # LoRA alone
    config.train.num_steps = 400
    config.train.warmup_steps = 20
    config.train.learning_rate = 2e-3
    config.checkpoint.every_steps = 400
    return config
