"""configs/finetune.py: fine-tuning on your own data from a converted / HF / training checkpoint,
and the README's "Fine-tune on your own data" commands run as written."""

import json
import os
import re
import shutil
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from configs import evals, finetune, tiny
from data_pipelines import demo_data, user_demo
from ib_jax.contract.config import RunConfig
from ib_jax.contract.model import from_config_dict
from ib_jax.convert import api
from ib_jax.eval import job as eval_job
from ib_jax.models.instructblip import InstructBlip, init_params
from ib_jax.predict import job as predict_job
from ib_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_INIT = "init=ckpt/instructblip-flan-t5-xl"
# CI's stand-in for a released model: a tiny random one, trained whole (module docstring of
# configs/finetune.py: `trainable=all` for a small model from scratch).
TINY_RUN = "steps=250,lr=1e-3,warmup=20,trainable=all"


def write_tiny_init(directory: str) -> str:
    """A converted tiny model (configs/tiny.py sizes, flax's initialisation) with the demo
    tokenizers where a Hugging Face directory keeps its tokenizer files."""
    model_config = from_config_dict(tiny.get_config().model)
    size = model_config.vision.image_size
    batch = {"pixel_values": np.zeros((1, size, size, 3), np.float32)}
    batch.update({k: np.ones((1, 4), np.int32) for k in ("input_ids", "attention_mask")})
    batch.update({k: np.ones((1, 4), np.int32) for k in ("qformer_input_ids", "labels")})
    batch["qformer_attention_mask"] = np.ones((1, 4), np.int32)
    boxed = init_params(InstructBlip(model_config), jax.random.key(0), batch)
    api.save_converted(directory, model_config, jax.device_get(flax.linen.meta.unbox(boxed)))
    os.makedirs(os.path.join(directory, "qformer_tokenizer"))
    shutil.copy(demo_data.DEMO_VOCAB, os.path.join(directory, "qformer_tokenizer", "vocab.txt"))
    shutil.copy(demo_data.DEMO_SPM, os.path.join(directory, "spiece.model"))
    return directory


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    return write_tiny_init(str(tmp_path_factory.mktemp("init") / "tiny"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return user_demo.write(str(tmp_path_factory.mktemp("data")), num_train=24, num_eval=4)


def test_model_and_tokenizers_come_from_the_converted_init(init, data):
    config = finetune.get_config(f"train={data['train']},eval={data['eval']},init={init}")
    RunConfig.from_config(config)  # every section typed and known
    assert from_config_dict(config.model) == api.load_converted(init)[0]
    assert config.data.qformer_vocab == os.path.join(init, "qformer_tokenizer", "vocab.txt")
    assert config.data.lm_spm == os.path.join(init, "spiece.model")
    assert config.data.image_size == 32 and config.init.pretrained == init
    (train,) = config.data.datasets
    assert (train["name"], train["split"], train["user"]["task"]) == ("my_data", "train", "vqa")
    assert config.evals.my_data.prompt == "{instruction}"  # the training instruction, verbatim
    assert (config.evals.my_data.mode, config.evals.my_data.metric) == ("generate", "exact_match")
    assert config.eval.after_training


def test_task_template_and_mix_options(init, data):
    base = f"train={data['train']},eval={data['eval']},init={init}"
    config = finetune.get_config(f"{base},task=choice,template=knowledge_grounded_image_qa")
    assert (config.evals.my_data.mode, config.evals.my_data.metric) == ("rank", "accuracy")
    assert config.evals.my_data.prompt == evals.MC_PROMPT
    config = finetune.get_config(f"{base},task=caption,name=shapes")
    assert config.evals.shapes.metric == "cider" and config.data.datasets[0]["name"] == "shapes"
    config = finetune.get_config(f"{base},mix=vqav2:0.5+gqa,root=/data/ib")
    assert [(e["name"], e.get("multiplier")) for e in config.data.datasets] == [
        ("my_data", None),
        ("vqav2", 0.5),
        ("gqa", 1.0),
    ]
    assert config.data.datasets[1]["image_root"] == "/data/ib/coco/images"


def test_bad_options_are_named(init, data, tmp_path):
    with pytest.raises(ValueError, match="needs init=PATH"):
        finetune.get_config(f"train={data['train']}")
    with pytest.raises(FileNotFoundError, match="not a training run"):
        finetune.get_config(f"train={data['train']},init={tmp_path}")
    with pytest.raises(ValueError, match="name of its own"):
        finetune.get_config(f"train={data['train']},init={init},name=gqa")
    with pytest.raises(ValueError, match="task='poem'"):
        finetune.get_config(f"train={data['train']},eval={data['eval']},init={init},task=poem")
    bare = tmp_path / "bare"
    shutil.copytree(init, bare, ignore=shutil.ignore_patterns("qformer_tokenizer", "*.model"))
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        finetune.get_config(f"train={data['train']},init={bare}")


@pytest.mark.slow
def test_imagefolder_train_csv_eval_parquet_predict_and_a_run_as_init(init, data, tmp_path):
    """The issue's new-user path: an imagefolder for training, a CSV for evaluation, a Parquet
    of Hugging Face Image structs for prediction, then the run itself as the next `init`."""
    arg = f"train={data['train_imagefolder']},eval={data['eval']},init={init},steps=2,batch=8"
    config = finetune.get_config(arg + ",eval_batch=8")
    workdir = str(tmp_path / "run")
    trainer.train(config, workdir)
    results = eval_job.run(config, workdir)
    assert np.isfinite(results["my_data"]["exact_match"])
    assert results["my_data"]["num_examples"] == 8
    out = tmp_path / "predictions.jsonl"
    rows = predict_job.run(workdir, data["eval_parquet"], str(out), batch_size=8, progress=False)
    assert [r["image"] for r in rows] == [f"eval_{i // 2:04d}.png" for i in range(8)]
    assert len(out.read_text().splitlines()) == 8
    again = finetune.get_config(f"train={data['train']},init={workdir}")
    assert from_config_dict(again.model) == from_config_dict(config.model)
    assert again.data.lm_spm == config.data.lm_spm


def _readme_commands() -> list[str]:
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Fine-tune on your own data", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_commands_fine_tune_well_above_chance(tmp_path):
    commands = _readme_commands()
    assert len(commands) == 3 and all(README_INIT in c for c in commands[:2])
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")  # commands run from a checkout
    write_tiny_init(str(tmp_path / "tiny"))
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    # The README's generator, with fewer held-out images (the three commands run as written).
    generate = [sys.executable, "-m", "data_pipelines.user_demo", "--out=my_data", "--num_eval=30"]
    subprocess.run(generate, cwd=tmp_path, env=env, check=True)
    for command in commands:
        command = command.replace(README_INIT, f"init=tiny,{TINY_RUN}")
        command = command.replace("python -m", f"{sys.executable} -m", 1)
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    (metrics,) = [json.loads(line) for line in open(tmp_path / "runs/my_data/eval/metrics.jsonl")]
    # Chance: 1 in 4 colours, 1 in 3 shapes (0.29 on this held-out mix); measured: 0.8-0.98.
    print("README run:", metrics)
    assert metrics["exact_match"] > 0.7, metrics
    rows = [json.loads(line) for line in open(tmp_path / "runs/my_data/predictions.jsonl")]
    assert len(rows) == metrics["num_examples"] == 60
    assert rows[0]["image"].endswith("my_data/images/eval_0000.png")
    assert np.mean([r["output"] == r["reference"][0] for r in rows]) > 0.7
