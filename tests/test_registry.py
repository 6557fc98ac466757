"""Dataset registry: the paper's held-in/held-out split, consistency with formats and metrics."""

import dataclasses
import math

import pytest

from configs import evals
from data_pipelines import formats, registry, specs
from ib_jax.eval import metrics


def test_paper_split_13_held_in_13_held_out():
    assert len(registry.held_in()) == 13
    assert len(registry.held_out()) == 13
    assert set(registry.held_in()).isdisjoint(registry.held_out())
    # Figure 2 anchors.
    assert {"coco_caption", "vqav2", "okvqa", "aokvqa", "vqav2_qg"} <= set(registry.held_in())
    assert {
        "nocaps",
        "flickr30k",
        "gqa",
        "scienceqa",
        "visdial",
        "hateful_memes",
        "msvd_qa",
        "ivqa",
    } <= set(registry.held_out())
    assert registry.demo() == ["demo_caption", "demo_vqa", "demo_mc", "demo_qg"]


def test_every_spec_points_at_real_format_and_category():
    for name in registry.names():
        spec = registry.get(name)
        assert spec.format in formats.PARSERS, (name, spec.format)
        assert spec.task_category in specs.TASK_CATEGORIES
        if spec.split == "held_in":
            assert spec.num_train and spec.size_source, name


def test_data_facts_follow_the_paper():
    assert registry.get("textvqa").ocr and not registry.get("gqa").ocr
    assert {n for n in registry.names() if registry.get(n).is_video} == {
        "msvd_qa",
        "msrvtt_qa",
        "ivqa",
    }
    assert registry.get("demo_vqa").short_answer and registry.get("demo_mc").format == "aokvqa"
    # Data facts only: the evaluation protocol is the run config's (configs/evals.py).
    assert not {"metric", "eval_mode", "eval_prompt", "decoding"} & {
        f.name for f in dataclasses.fields(specs.DatasetSpec)
    }


def test_every_dataset_has_an_evaluation_protocol_with_the_papers_settings():
    assert set(evals.PROTOCOL) == set(registry.names())
    for name, row in evals.PROTOCOL.items():
        assert row["metric"] in metrics.METRICS, (name, row["metric"])
    assert evals.PROTOCOL["gqa"]["prompt"] == "Question: {question} Short answer:"
    assert evals.PROTOCOL["nocaps"]["prompt"] == "A short image description:"
    qa = evals.PROTOCOL["vizwiz"]
    # LAVIS's min_len 1 / 10 count the T5 start token (docs/PROTOCOL.md); repetition penalty 1.5
    assert (qa["num_beams"], qa["max_new_tokens"], qa["min_new_tokens"]) == (5, 10, 0)
    assert qa["length_penalty"] == -1 and qa["repetition_penalty"] == 1.5
    cap = evals.PROTOCOL["flickr30k"]
    assert (cap["num_beams"], cap["max_new_tokens"], cap["min_new_tokens"]) == (5, 80, 9)
    ranked = {n for n in registry.held_out() if evals.PROTOCOL[n]["mode"] == "rank"}
    assert ranked == {
        "scienceqa",
        "iconqa",
        "hateful_memes",
        "visdial",
        "msvd_qa",
        "msrvtt_qa",
        "vsr",
    }


def test_get_unknown_lists_known():
    with pytest.raises(KeyError, match=r"unknown dataset 'coco'.*coco_caption"):
        registry.get("coco")


def test_spec_is_frozen_and_validated():
    spec = registry.get("vqav2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"
    with pytest.raises(ValueError, match="unknown task category 'vqa'"):
        specs.DatasetSpec("x", "vqa", "held_in", "vqav2", 1, "")


def test_sampling_weights_sqrt_and_multipliers():
    w = registry.sampling_weights(["okvqa", "aokvqa"])
    expected_ok = math.sqrt(9_009) / (math.sqrt(9_009) + math.sqrt(17_056))
    assert w["okvqa"] == pytest.approx(expected_ok)
    assert sum(w.values()) == pytest.approx(1.0)
    # Paper's direction: raise OKVQA, lower A-OKVQA.
    adjusted = registry.sampling_weights(["okvqa", "aokvqa"], {"okvqa": 2.0, "aokvqa": 0.5})
    ratio = adjusted["okvqa"] / adjusted["aokvqa"]
    assert ratio == pytest.approx(4 * math.sqrt(9_009 / 17_056))


def test_sampling_weights_sizes_override_and_errors():
    w = registry.sampling_weights(
        ["demo_vqa", "demo_caption"], sizes={"demo_vqa": 400, "demo_caption": 100}
    )
    assert w == pytest.approx({"demo_vqa": 2 / 3, "demo_caption": 1 / 3})
    with pytest.raises(ValueError, match="'demo_mc' has no training size"):
        registry.sampling_weights(["demo_mc"])
    with pytest.raises(
        ValueError, match=r"multipliers given for datasets not in the mixture: \['okvq'\]"
    ):
        registry.sampling_weights(["okvqa"], {"okvq": 2.0})
    with pytest.raises(ValueError, match="multiplier for 'okvqa' must be > 0"):
        registry.sampling_weights(["okvqa", "vqav2"], {"okvqa": 0.0})
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        registry.sampling_weights(["nope"])


def test_every_dataset_has_a_published_layout_and_the_configs_use_it():
    from data_pipelines import layouts
    from ib_jax import configs_util

    paper = [n for n in registry.names() if n not in registry.demo()]
    assert sorted(layouts.LAYOUTS) == sorted(paper)
    assert all("train" in layouts.LAYOUTS[n] for n in registry.held_in())
    assert all("eval" in layouts.LAYOUTS[n] for n in registry.held_out())
    heldin = configs_util.load_config("configs/data_heldin.py:root=/r,okvqa.image_root=/elsewhere")
    assert [e["name"] for e in heldin.datasets] == registry.held_in()
    for entry in heldin.datasets:
        paths = [entry["ann_path"]] if isinstance(entry["ann_path"], str) else entry["ann_path"]
        assert all(p.startswith("/r/") for p in paths)
    by_name = {e["name"]: e for e in heldin.datasets}
    assert by_name["okvqa"]["image_root"] == "/elsewhere"
    assert by_name["vqav2"]["ann_path"] == [
        "/r/vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
        "/r/vqav2/v2_mscoco_train2014_annotations.json",
    ]
    heldout = configs_util.load_config("configs/eval_heldout.py:root=/r,frames=1")
    assert sorted(e["name"] for e in heldout.data.eval_datasets) == sorted(registry.held_out())
    videos = {e["name"]: e for e in heldout.data.eval_datasets if registry.get(e["name"]).is_video}
    assert {n: e["image_root"] for n, e in videos.items()} == {
        "msvd_qa": "/r/msvd/frames",
        "msrvtt_qa": "/r/msrvtt/frames",
        "ivqa": "/r/ivqa/frames",
    }
    # Ranking candidates are never empty: the video QA sets rank the training answers.
    # VizWiz's local (val) score is declared as vizwiz_val (configs/evals.py REPORTED_AS).
    assert sorted(heldout.evals) == sorted(
        evals.REPORTED_AS.get(name, name) for name in registry.held_out()
    )
    assert videos["msvd_qa"]["parse_options"]["answer_vocab"] == "/r/msvd/train_qa.json"
    with pytest.raises(KeyError, match="no published layout for dataset 'vqa2'"):
        configs_util.load_config("configs/data_heldin.py:root=/r,vqa2.image_root=/x")
    with pytest.raises(KeyError, match="'nocaps' has no 'train' split"):
        configs_util.load_config("configs/data_heldin.py:root=/r,train=nocaps")
