"""LoRA on the embedded demo: the language model's and the Q-Former's attention (and the T5 MLPs)
adapted with rank-8 pairs, everything else frozen (issue 23's evidence).

It starts from a demo model (`init=DIR`: here a short `configs/demo.py` run, saved as a
converted directory, since `config.init.pretrained` reads converted and HF directories) and
trains the LoRA parameters alone; the held-out scores are printed at the end, as for the demo:

  python -m ib_jax.train --config=configs/demo.py --workdir=workdirs/demo_base \\
      --config.train.num_steps=300 --config.checkpoint.every_steps=300
  python -c "import ib_jax; from ib_jax.convert import api; \\
      m, p = ib_jax.load_pretrained('workdirs/demo_base'); \\
      api.save_converted('workdirs/demo_base_converted', m.config, p)"
  python -m ib_jax.train --config=configs/demo_lora.py:init=workdirs/demo_base_converted \\
      --workdir=workdirs/demo_lora

Options (after the file name's `:`, comma-joined): `init=` the model to start from (a converted
or HF directory: `config.init.pretrained`), `root=` the demo data's directory.

Measured (2026-12-04, the 2-core machine under load from other jobs): a `configs/demo.py` run
stopped at 300 steps scores VQA accuracy 0.51, multiple choice 0.537, CIDEr 2.11
on the held-out images; 400 steps of this config from it, training the 39,936 LoRA parameters
alone (3.8% of the model), give 0.637, 0.68 and 2.39 (chance is about 0.25). Its adapter
(`python -m ib_jax.export --checkpoint=workdirs/demo_lora --out=adapter/`) loaded by
`PeftModel.from_pretrained` onto the exported base gives our logits to 1.3e-5.
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
