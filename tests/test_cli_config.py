"""The data configs' `get_config` argument as the command line gives it ("root=R,scienceqa.split=
test"): every parse option overridable with a typed value, unknown keys refused naming the known
ones, `tfds=` for prepared data; and the miniature runs with the paper's configs as they are
(its demo tokenizers where the configs look)."""

import os
import subprocess
import sys

import pytest

from data_pipelines import layouts, miniature, prepare, sources
from ib_jax import configs_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eval_entries(arg: str) -> dict:
    config = configs_util.load_config(f"configs/eval_heldout.py:{arg}")
    return {e["name"]: e for e in config.data.eval_datasets}


def test_a_split_parse_option_is_overridden_without_colliding_with_the_entry_split():
    entries = _eval_entries("root=/r,scienceqa.split=val,flickr30k.split=val")
    assert entries["scienceqa"]["split"] == "eval"  # the layout's split: which files
    assert entries["scienceqa"]["parse_options"]["split"] == "val"  # the parser's option
    assert entries["flickr30k"]["parse_options"]["split"] == "val"


def test_per_dataset_values_are_typed_as_their_parser_declares():
    entries = _eval_entries(
        "root=/r,msrvtt_qa.answer_vocab_size=1000,iconqa.ques_types=choose_txt+choose_img,"
        "msvd_qa.answer_vocab_size=none,scienceqa.split=3"
    )
    assert entries["msrvtt_qa"]["parse_options"]["answer_vocab_size"] == 1000
    assert entries["iconqa"]["parse_options"]["ques_types"] == ["choose_txt", "choose_img"]
    assert entries["msvd_qa"]["parse_options"]["answer_vocab_size"] is None
    assert entries["scienceqa"]["parse_options"]["split"] == "3"  # its parser takes a str
    # OCR-VQA's dataset.json numbers its splits 1/2/3: an int, or no example would match.
    _, per_dataset = layouts.parse_arg("ocrvqa.split=3", {})
    assert per_dataset == {"ocrvqa": {"split": 3}}


def test_config_options_are_typed_as_their_defaults():
    config = configs_util.load_config(
        "configs/data_heldin.py:root=/r,batch=8,frames=1,train=msvd_qa"
    )
    assert config.global_batch_size == 8 and type(config.global_batch_size) is int
    assert config.datasets[0]["image_root"] == "/r/msvd/frames"
    with pytest.raises(ValueError, match=r"batch='eight': expected a int"):
        configs_util.load_config("configs/data_heldin.py:batch=eight")


@pytest.mark.parametrize(
    "config, arg, message",
    [
        (
            "data_heldin",
            "rooot=/x",
            r"rooot=: not an option \(did you mean 'root'\?\); the options: ",
        ),
        ("data_heldin", "step=3", r"step=: not an option; the options: root, batch, train, eval"),
        ("eval_heldout", "dataset=gqa", r"dataset=: not an option \(did you mean 'datasets'\?\)"),
        (
            "eval_heldout",
            "scienceqa.splt=x",
            r"scienceqa has no field 'splt' \(did you mean 'split'",
        ),
        ("rehearsal", "root=/r,step=3", r"step=: not an option \(did you mean 'steps'\?\)"),
        ("tiny", "rooot=/x", r"rooot=: not an option \(did you mean 'root'\?\)"),
        (
            "instructblip_flant5xl",
            "root=/r,vqa2.image_root=/x",
            r"no published layout for dataset 'vqa2'",
        ),
    ],
)
def test_unknown_keys_are_refused_naming_the_known_ones(config, arg, message):
    with pytest.raises((ValueError, KeyError), match=message):
        configs_util.load_config(f"configs/{config}.py:{arg}")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mini"))
    miniature.write_miniature(root)
    return root


@pytest.mark.parametrize(
    "config",
    [
        "data_heldin.py",
        "instructblip_flant5xl.py",
        "instructblip_vicuna7b.py",
        "eval_heldout.py",
        "eval_heldout.py:lm=vicuna7b",
    ],
)
def test_the_miniature_has_the_tokenizers_where_the_configs_look(mini, config):
    path, _, arg = config.partition(":")
    loaded = configs_util.load_config(f"configs/{path}:root={mini}" + (f",{arg}" if arg else ""))
    data = loaded.get("data", loaded)
    for key in ("qformer_vocab", "lm_spm"):
        assert os.path.isfile(data[key]), (key, data[key])


def test_check_passes_on_the_miniature_with_the_papers_config(mini):
    """The README's command, as written, on the miniature: every dataset ok, exit 0."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipelines.check",
            f"--config=configs/instructblip_flant5xl.py:root={mini}",
            "--sample=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "13 datasets checked, 0 with faults" in done.stdout


def test_data_heldin_reads_what_prepare_wrote(mini, tmp_path):
    raw = configs_util.load_config(f"configs/data_heldin.py:root={mini},train=scienceqa,eval=vsr")
    prepare.prepare_config(raw, str(tmp_path / "tfds"))
    prepared = configs_util.load_config(
        f"configs/data_heldin.py:tfds={tmp_path / 'tfds'},train=scienceqa,eval=vsr"
    )
    for raw_entry, entry in zip(
        [*raw.datasets, *raw.eval_datasets], [*prepared.datasets, *prepared.eval_datasets]
    ):
        assert "tfds" in entry and entry["name"] == raw_entry["name"]
        records, expected = sources.load_records(entry), sources.load_records(raw_entry)
        assert len(records) == len(expected) > 0
        assert [r["id"] for r in records] == [r["id"] for r in expected]
