"""Your own data (data_pipelines/formats/user.py, data_pipelines/user_data.py): every layout a
user brings, read into the records the 26 datasets give, and through the same pipelines."""

import io
import json
import os

import numpy as np
import pytest
from etils import epath
from PIL import Image

from data_pipelines import eval_pipeline, formats, images, sources, train_pipeline, user_data
from data_pipelines.demo_data import DEMO_SPM, DEMO_VOCAB
from data_pipelines.formats.common import ParseError
from tests.test_paths import bucket  # noqa: F401  (the in-memory gs:// fixture)

COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 50)}


def _png(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 12), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def folder(tmp_path):
    """images/{red,blue,green}.png and the rows that describe them."""
    (tmp_path / "images").mkdir()
    for name, color in COLORS.items():
        (tmp_path / "images" / f"{name}.png").write_bytes(_png(color))
    return tmp_path


ROWS = [
    {"image": f"images/{name}.png", "question": "What color is it?", "answer": name}
    for name in COLORS
]


def _expected(folder, key="answers"):
    return [
        {
            "id": str(i),
            "image": str(folder / "images" / f"{name}.png"),
            "question": "What color is it?",
            key: [name],
            "dataset": "user",
        }
        for i, name in enumerate(COLORS)
    ]


def _parse(path, **options):
    return formats.parse("user", path, "", dataset="user", max_errors=None, **options)


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_every_file_type_gives_the_same_records(folder, kind):
    path = folder / f"data.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "json":
        path.write_text(json.dumps(ROWS))
    elif kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        lines = [sep.join(ROWS[0])] + [sep.join(r.values()) for r in ROWS]
        path.write_text("\n".join(lines) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    records = _parse(str(path))
    assert list(records) == _expected(folder)
    assert records.report.num_errors == 0


def test_parquet_of_hf_image_structs_embeds_the_bytes_and_decodes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"image": {"bytes": _png(c), "path": f"{n}.png"}, "prompt": "Color?", "output": n}
        for n, c in COLORS.items()
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    records = _parse(str(tmp_path / "train.parquet"))
    assert [r["image_path"] for r in records] == ["red.png", "blue.png", "green.png"]
    assert [r["answers"] for r in records] == [["red"], ["blue"], ["green"]]
    decoded = Image.open(io.BytesIO(records[1]["image_bytes"])).convert("RGB")
    assert decoded.getpixel((3, 3)) == COLORS["blue"]


def test_hf_save_to_disk_and_imagefolder(folder):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
        }
    )
    rows = {
        "image": [str(folder / r["image"]) for r in ROWS],
        "question": [r["question"] for r in ROWS],
        "answer": [r["answer"] for r in ROWS],
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder / "hf"))
    records = _parse(str(folder / "hf"))
    assert [r["answers"] for r in records] == [["red"], ["blue"], ["green"]]
    pixels = Image.open(io.BytesIO(records[2]["image_bytes"])).convert("RGB")
    assert pixels.getpixel((0, 0)) == COLORS["green"]
    # The imagefolder layout: metadata.jsonl beside the images, `file_name` relative to it.
    metadata = [{"file_name": f"{n}.png", "text_input": "Color?", "text_output": n} for n in COLORS]
    (folder / "images" / "metadata.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in metadata)
    )
    records = _parse(str(folder / "images"))
    assert [r["image"] for r in records] == [str(folder / "images" / f"{n}.png") for n in COLORS]
    assert [r["question"] for r in records] == ["Color?"] * 3


def test_joined_files_columns_mapping_and_images_folder(folder):
    (folder / "a.jsonl").write_text(json.dumps({"photo": "red.png", "q": "Q1", "a": "red"}) + "\n")
    (folder / "b.csv").write_text("photo,q,a\nblue.png,Q2,blue\n")
    records = _parse(
        f"{folder}/a.jsonl+{folder}/b.csv",
        columns="image:photo|question:q|answers:a",
        images=str(folder / "images"),
    )
    assert [(r["id"], r["image"], r["question"]) for r in records] == [
        ("a.jsonl:0", str(folder / "images/red.png"), "Q1"),
        ("b.csv:0", str(folder / "images/blue.png"), "Q2"),
    ]


def test_a_missing_column_is_named_with_the_columns_found(folder):
    (folder / "d.csv").write_text("picture,question,answer\nimages/red.png,Q,red\n")
    with pytest.raises(ParseError, match=r"no image column.*columns found: \['picture'"):
        _parse(str(folder / "d.csv"))
    with pytest.raises(ParseError, match=r"column 'pic' \(columns=image:pic\).*found"):
        _parse(str(folder / "d.csv"), columns={"image": "pic"})
    (folder / "e.csv").write_text("image,question\nimages/red.png,Q\n")
    with pytest.raises(ParseError, match="no answers column"):
        _parse(str(folder / "e.csv"))


def test_bad_rows_are_named_by_file_and_row_and_counted(folder):
    (folder / "bad.csv").write_text(
        "image,question,answer\nimages/red.png,Q,red\n,Q,blue\nimages/blue.png,Q,\n"
    )
    records = _parse(str(folder / "bad.csv"))
    assert len(records) == 1 and records.report.num_errors == 2
    assert records.report.messages == [
        f"{folder}/bad.csv: line 3: no image",
        f"{folder}/bad.csv: line 4: no answer",
    ]
    entry = user_data.entry("mine", str(folder / "bad.csv"))
    with pytest.raises(ValueError, match=r"2 of 3 annotation entries.*max_bad_fraction"):
        sources.load_records(entry, max_bad_fraction=0.5)
    assert len(sources.load_records(entry, max_bad_fraction=0.7)) == 1


def test_choices_as_text_or_index_and_conversations(folder):
    rows = [
        {"image": "images/red.png", "question": "Color?", "choices": ["blue", "red"], "answer": 1},
        {"image": "images/red.png", "question": "Color?", "choices": "blue|red", "answer": "Red"},
        {"image": "images/red.png", "question": "Color?", "choices": ["blue"], "answer": "red"},
        {
            "image": "images/blue.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is it?"},
                {"from": "gpt", "value": "A square."},
                {"role": "user", "content": "Its color?"},
                {"role": "assistant", "content": "Blue."},
            ],
        },
    ]
    (folder / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = _parse(str(folder / "c.jsonl"))
    assert [(r.get("answer_index"), r["answers"]) for r in records[:2]] == [(1, ["red"])] * 2
    assert records.report.messages == [
        f"{folder}/c.jsonl: line 3: answer 'red' is not one of the choices ['blue']"
    ]
    turns = records[2:]
    assert [(t["id"], t["question"], t["answers"], t["dialog"]) for t in turns] == [
        ("3_0", "What is it?", ["A square."], []),
        ("3_1", "Its color?", ["Blue."], [["What is it?", "A square."]]),
    ]


def test_prediction_input_keeps_rows_without_image_or_answer(folder):
    (folder / "p.csv").write_text("image,question\nimages/red.png,Q\n,Q\n")
    records = _parse(str(folder / "p.csv"), require_answer=False)
    assert [r.get("image") for r in records] == [str(folder / "images/red.png"), None]
    records = _parse(str(folder / "images"), require_answer=False, default_instruction="Color?")
    assert [os.path.basename(r["image"]) for r in records] == ["blue.png", "green.png", "red.png"]
    assert {r["question"] for r in records} == {"Color?"}


def test_bucket_image_paths_are_read_through_epath(folder, bucket):  # noqa: F811
    url = "gs://fake-bucket/pics/red.png"
    epath.Path(url).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(url).write_bytes(_png(COLORS["red"]))
    (folder / "g.jsonl").write_text(json.dumps({"image": url, "question": "Q", "answer": "red"}))
    (record,) = _parse(str(folder / "g.jsonl"))
    assert record["image"] == url
    assert images.load_image(url).getpixel((1, 1)) == COLORS["red"]


def _data_config(train_entry, eval_entry):
    return dict(
        datasets=[train_entry],
        eval_datasets=[eval_entry],
        image_size=16,
        qformer_max_len=16,
        text_max_len=16,
        target_max_len=8,
        qformer_vocab=DEMO_VOCAB,
        lm_spm=DEMO_SPM,
        global_batch_size=2,
        prefetch_batches=0,
    )


@pytest.mark.parametrize("template", ["", "image_question_answering"])
def test_user_entries_go_through_the_training_and_eval_pipelines(folder, template):
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    path = str(folder / "data.jsonl")
    train = user_data.entry("colors", path, "train", template=template)
    evaluation = user_data.entry("colors", path, "eval", template=template)
    config = _data_config(train, evaluation)
    examples, weights = train_pipeline.build_train_examples(config, keep_text=True)
    assert weights == {"colors": 1.0}
    example = next(iter(examples))
    if template:  # the paper's VQA templates, filled with the question
        assert "What color is it?" in example["_instruction"]
    else:  # verbatim
        assert example["_instruction"] == "What color is it?"
    assert example["_target"] in COLORS
    prompt = "{instruction}" if not template else "Question: {question} Short answer:"
    batch = next(iter(eval_pipeline.build_eval_dataset(config, "colors", "eval", prompt=prompt)))
    assert batch["meta"]["answers"] == [["red"], ["blue"]]
    assert batch["meta"]["instruction"][0] == prompt.format(
        instruction="What color is it?", question="What color is it?"
    )
    red = np.asarray(batch["pixel_values"][0])
    assert red[..., 0].mean() > red[..., 2].mean()  # the red image, decoded and normalized


def test_user_names_never_collide_with_the_registry(folder):
    with pytest.raises(ValueError, match="name of its own"):
        user_data.entry("gqa", str(folder / "x.csv"))
    with pytest.raises(ValueError, match="task='poem' is not one of"):
        user_data.entry("mine", str(folder / "x.csv"), task_name="poem")


def test_video_rows_become_clips(folder):
    rows = [
        {"video": "clips/a.mp4", "question": "What happens?", "answer": "a dog runs"},
        {"frames": ["f/0.png", "f/1.png"], "question": "What happens?", "answer": "it rains"},
    ]
    (folder / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = _parse(str(folder / "v.jsonl"))
    assert first["video"] == str(folder / "clips/a.mp4") and "image" not in first
    assert second["frames"] == [str(folder / "f/0.png"), str(folder / "f/1.png")]
