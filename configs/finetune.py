"""Fine-tune on your own data, then evaluate it: the model and both tokenizers come from `init`.

    python -m ib_jax.train --config=configs/finetune.py:train=PATH,eval=PATH,init=CKPT --workdir=DIR
    python -m ib_jax.evaluate --config=configs/finetune.py:train=PATH,eval=PATH,init=CKPT --workdir=DIR

`init` is a Hugging Face InstructBLIP directory (its config.json, weights, `qformer_tokenizer/`
and `spiece.model` / `tokenizer.model`), a directory written by `python -m ib_jax.convert` (the
tokenizer files beside it in the same layout, or `qformer_vocab=` / `lm_spm=`), or a training run
(its workdir for the latest step, or WORKDIR/checkpoints/STEP: the run's own model and
tokenizers). `train` and `eval` are anything the `user` format reads (data_pipelines/formats/
user.py: JSON Lines, JSON, CSV/TSV, Parquet, save_to_disk folders, imagefolders; "+" joins).

Options, comma-separated:

  task=vqa            vqa (exact match after VQA normalization), caption (CIDEr), choice (the
                      row's choices ranked by likelihood: accuracy), open (free-form: CIDEr);
                      the evaluation is `config.evals.<name>` (configs/evals.py USER_TASKS)
  template=           empty: each row's instruction verbatim, in training and evaluation;
                      a task category (data_pipelines/templates.py, e.g.
                      image_question_answering) samples the paper's templates in training and
                      evaluates with that category's zero-shot prompt
  name=my_data        your dataset's name (outputs, TFDS datasets, metrics are keyed by it)
  images=DIR          the folder image paths are relative to (default: each file's folder)
  columns=f:c|f:c     your column names for the fields (image, question, answers, choices...)
  mix=vqav2:1+gqa:0.5 also train on any of the 26 (found under root=, their published layout),
                      with these multipliers (weights ~ sqrt(size) x multiplier, yours 1)
  root=DIR            where the mixed-in datasets are
  steps=1000, batch=16, lr=1e-5, warmup=100, eval_batch=16
  trainable=qformer   the paper's: Q-Former, queries, projection, ln_vision; `all` trains every
                      parameter (a small model from scratch)
  qformer_vocab=, lm_spm=   tokenizer files when `init` has none
  tfds=DIR            read DIR/<name>/{train,eval}, written by `python -m data_pipelines.prepare
                      --config=<this config> --out=DIR` (then train= may be left out; eval=1
                      keeps the evaluation)
"""

import json
import os

import ml_collections

from configs import common, evals
from data_pipelines import layouts, registry, user_data
from ib_jax import checkpoint as checkpoint_lib
from ib_jax.contract.model import to_config_dict
from ib_jax.convert import hf_config
from ib_jax.eval import loading
from ib_jax.predict import tokenizer_files

OPTIONS = {
    "train": "",
    "eval": "",
    "init": "",
    "task": "vqa",
    "template": "",
    "name": "my_data",
    "images": "",
    "columns": "",
    "mix": "",
    "root": "/data/instructblip",
    "steps": 1000,
    "batch": 16,
    "lr": 1e-5,
    "warmup": 100,
    "eval_batch": 16,
    "trainable": "qformer",
    "qformer_vocab": "",
    "lm_spm": "",
    "tfds": "",
}
# Answer tokens kept per task (LAVIS trains short answers and captions well within these).
TARGET_LEN = {"vqa": 16, "choice": 16, "caption": 48, "open": 128}
# The evaluation prompt of `template=` mode: the category family's zero-shot prompt.
TEMPLATE_PROMPTS = {
    "vqa": evals.VQA_PROMPT,
    "caption": evals.CAPTION_PROMPT,
    "choice": evals.MC_PROMPT,
}


def from_init(init: str) -> tuple[ml_collections.ConfigDict, str | None, str | None]:
    """(model section, Q-Former vocab, LM SentencePiece model) of the starting checkpoint."""
    run = checkpoint_lib.training_run(init)
    if run is not None:
        workdir, step = run
        if step is None:
            steps = checkpoint_lib.finalized_steps(workdir)
            if not steps:
                raise FileNotFoundError(f"init={init}: no finished checkpoint in {workdir}")
            step = steps[-1]
        saved = loading._saved_run_config(workdir, step)  # the run config saved with the step
        if not saved or not saved.get("model"):
            raise ValueError(f"init={init}: step {step} has no saved run config with a model")
        data = saved.get("data") or {}
        return (
            ml_collections.ConfigDict(saved["model"]),
            data.get("qformer_vocab"),
            data.get("lm_spm"),
        )
    if not os.path.isfile(os.path.join(init, "config.json")):
        raise FileNotFoundError(
            f"init={init!r}: not a training run (workdir or WORKDIR/checkpoints/STEP), a converted "
            "directory (config.json + params/) or a Hugging Face directory (config.json)"
        )
    vocab, spm = tokenizer_files(init)
    if os.path.isdir(os.path.join(init, "params")):  # written by ib_jax.convert
        with open(os.path.join(init, "config.json")) as f:
            return ml_collections.ConfigDict(json.load(f)), vocab, spm
    model = hf_config.model_config_from_hf(hf_config.read_hf_config(init))
    return to_config_dict(model), vocab, spm


def _mix(options: dict, per_dataset: dict) -> list[dict]:
    """The entries of `mix=name:multiplier+name` (train split, published layouts under root)."""
    result = []
    for item in filter(None, options["mix"].split("+")):
        name, _, multiplier = item.partition(":")
        registry.get(name)  # an unknown name is an error naming the known ones
        entry = layouts.entry(name, "train", options["root"], overrides=per_dataset.get(name))
        entry["multiplier"] = float(multiplier or 1.0)
        result.append(entry)
    return result


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The fine-tuning run (options in the module docstring)."""
    options, per_dataset = layouts.parse_arg(arg, OPTIONS)
    for required in ("train", "init"):
        if not options[required] and not (required == "train" and options["tfds"]):
            raise ValueError(f"configs/finetune.py needs {required}=PATH (e.g. {required}=...)")
    task, name = options["task"], options["name"]
    model, qformer_vocab, lm_spm = from_init(options["init"])
    qformer_vocab, lm_spm = options["qformer_vocab"] or qformer_vocab, options["lm_spm"] or lm_spm
    if not qformer_vocab or not lm_spm:
        raise FileNotFoundError(
            f"init={options['init']}: no tokenizer files found (qformer_tokenizer/vocab.txt, "
            "spiece.model or tokenizer.model); give qformer_vocab= and lm_spm="
        )
    # Absolute: the run config saved with each checkpoint is read from other folders later.
    qformer_vocab, lm_spm = os.path.abspath(qformer_vocab), os.path.abspath(lm_spm)
    user_options = dict(
        task_name=task,
        template=options["template"],
        images=options["images"] or None,
        columns=options["columns"] or None,
    )
    config = ml_collections.ConfigDict()
    config.model = model
    config.init = common.init(pretrained=options["init"])
    if options["tfds"]:  # what `python -m data_pipelines.prepare` wrote: OUT/<name>/<split>
        user = dict(task=task, template=options["template"])
        train, eval_entries = (
            [dict(name=name, tfds=os.path.join(options["tfds"], name, s), split=s, user=user)]
            for s in ("train", "eval")
        )
        eval_entries = eval_entries if options["eval"] else []
    else:
        train = [user_data.entry(name, options["train"], "train", **user_options)]
        eval_entries = (
            [user_data.entry(name, options["eval"], "eval", **user_options)]
            if options["eval"]
            else []
        )
    config.data = ml_collections.ConfigDict(
        dict(
            datasets=train + _mix(options, per_dataset),
            eval_datasets=eval_entries,
            image_size=int(model.vision.image_size),
            qformer_max_len=min(128, int(model.qformer.max_position_embeddings)),
            text_max_len=128,
            target_max_len=TARGET_LEN[task],
            qformer_vocab=qformer_vocab,
            lm_spm=lm_spm,
            lm_type=model.lm_type,
            global_batch_size=options["batch"],
            eval_batch_size=options["eval_batch"],
            seed=0,
            prefetch_batches=2,
        )
    )
    config.mesh = common.mesh(data=-1)
    trainable = {"all": [r".*"], "qformer": None}
    if options["trainable"] not in trainable:
        raise ValueError(f"trainable={options['trainable']!r}: qformer (the paper's) or all")
    train_fields = dict(
        num_steps=options["steps"],
        warmup_steps=min(options["warmup"], max(options["steps"] // 2, 1)),
        learning_rate=options["lr"],
        log_every=max(1, min(50, options["steps"] // 10)),
    )
    if trainable[options["trainable"]]:
        train_fields["trainable"] = trainable[options["trainable"]]
    config.train = common.train(**train_fields)
    config.checkpoint = common.checkpoint(every_steps=max(options["steps"] // 2, 1), keep=2)
    config.eval = common.eval_job(
        batch_size=options["eval_batch"], after_training=bool(eval_entries)
    )
    config.evals = ml_collections.ConfigDict()
    if eval_entries:
        config.evals[name] = evals.declare_user(name, task)
        if options["template"] and task in TEMPLATE_PROMPTS:  # the category's zero-shot prompt
            config.evals[name].prompt = TEMPLATE_PROMPTS[task]
    return config
