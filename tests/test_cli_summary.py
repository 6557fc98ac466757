"""The closing summary of `train` and `evaluate` (ib_jax/summary.py): the checkpoint written, the
final metrics as a table, where the logs, metrics, predictions and pages are."""

import json

from ib_jax import summary


def _workdir(tmp_path):
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "checkpoints" / "6").mkdir()
    (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1").mkdir()  # not finished: not named
    page = tmp_path / "eval" / "predictions" / "demo_vqa" / "step_6.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    lines = [
        {
            "checkpoint": "step_4",
            "step": 4,
            "dataset": "demo_vqa",
            "time": 1.0,
            "vqa_accuracy": 0.1,
        },
        {
            "checkpoint": "step_6",
            "step": 6,
            "dataset": "demo_vqa",
            "time": 2.0,
            "num_examples": 100,
            "num_scored": 100,
            "vqa_accuracy": 0.957,
        },
        {
            "checkpoint": "step_6",
            "step": 6,
            "dataset": "demo_caption",
            "time": 3.0,
            "num_examples": 50,
            "cider": 2.83,
        },
        {
            "checkpoint": "step_6",
            "step": 6,
            "dataset": "gqa",
            "time": 4.0,
            "failed": True,
            "error": "FileNotFoundError: annotation file '/x/gqa.json' does not exist",
        },
    ]
    (tmp_path / "eval" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(tmp_path)


def test_train_summary_names_the_checkpoint_metrics_and_places(tmp_path):
    workdir = _workdir(tmp_path)
    text = summary.closing_summary(
        "train",
        workdir,
        train_metrics={"step": 6, "loss": 0.41234, "grad_norm": 1.5, "learning_rate": 1e-5},
        num_steps=6,
    )
    assert text.splitlines() == [
        f"train done: checkpoint {tmp_path}/checkpoints/6 (step 6 of 6)",
        "  metric         value",
        "  loss           0.4123",
        "  grad_norm      1.5",
        "  learning_rate  1e-05",
        "evaluation of step_6:",
        "  evaluation    metric        value   examples",
        "  demo_vqa      vqa_accuracy  0.957   100",
        "  demo_caption  cider         2.83    50",
        "  gqa           -             failed  -",
        "  gqa failed: FileNotFoundError: annotation file '/x/gqa.json' does not exist",
        f"logs          {tmp_path}/logs/train.log",
        f"metrics       {tmp_path}/metrics.jsonl, TensorBoard {tmp_path}/tensorboard",
        f"eval metrics  {tmp_path}/eval/metrics.jsonl",
        f"predictions   {tmp_path}/eval/predictions/<evaluation>/step_6.jsonl",
        f"pages         {tmp_path}/eval/predictions/demo_vqa/step_6.html",
    ]


def test_a_run_without_evaluation_shows_none(tmp_path):
    workdir = _workdir(tmp_path)
    text = summary.closing_summary("train", workdir, train_metrics={"loss": 1.0}, evaluated=False)
    assert "evaluation of" not in text and "predictions" not in text
    assert text.splitlines()[0] == f"train done: checkpoint {tmp_path}/checkpoints/6 (step 6)"


def test_evaluate_summary(tmp_path):
    text = summary.closing_summary("evaluate", _workdir(tmp_path), log_path="/l/evaluate.log")
    assert text.splitlines()[0] == "evaluation of step_6:"
    assert "logs          /l/evaluate.log" in text and "train done" not in text
