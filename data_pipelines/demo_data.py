"""Embedded demo data: rendered shape scenes written in the annotation formats of the real datasets.

No download. `write_demo_dataset(root, num_train, num_eval, seed)` draws scenes (1-4 copies of one
shape in one of 4 bold colors on a 2x2 grid, 64 px PNG) and writes, for a train and a held-out
split, LAVIS-style annotation files:

- captions (COCO-caption style): train `[{"image", "caption": str, "image_id"}]` one row per caption,
  eval `[{"image", "caption": [str, ...], "image_id"}]`;
- short-answer VQA (VQAv2 style): `[{"question_id", "question", "answer": [10 answers], "image"}]`;
  the same file serves question generation (answer -> question), as the paper builds it from VQA;
- multiple choice (A-OKVQA style): `[{"question_id", "question", "image", "choices",
  "correct_choice_idx", "direct_answers"}]`.

The answer space is tiny (4 colors, 3 shapes, counts 1-4) and the signal bold, so a tiny model
learns it on CPU in minutes. `build_tokenizer_assets(out_dir)` regenerates the committed
`assets/demo_wordpiece_vocab.txt` and `assets/demo_spm.model` from the demo corpus.
"""

from __future__ import annotations

import fcntl
import json
import os
import string
import tempfile
from typing import Any

import numpy as np
from etils import epath
from PIL import Image, ImageDraw
from tqdm import tqdm

from data_pipelines import templates

ASSETS_DIR = os.path.join(os.path.dirname(__file__), "assets")
DEMO_VOCAB = os.path.join(ASSETS_DIR, "demo_wordpiece_vocab.txt")
DEMO_SPM = os.path.join(ASSETS_DIR, "demo_spm.model")

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 205, 20),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = ("one", "two", "three", "four")
SCENE_SIZE = 64
BACKGROUND = (235, 235, 235)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def render_scene(
    shape: str, color: str, count: int, rng: np.random.Generator, size: int = SCENE_SIZE
) -> Image.Image:
    """`count` copies of `shape` in `color`, each in its own cell of a 2x2 grid, jittered."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / 2
    for slot in rng.permutation(4)[:count]:
        cx = (slot % 2 + 0.5) * cell + rng.uniform(-cell * 0.08, cell * 0.08)
        cy = (slot // 2 + 0.5) * cell + rng.uniform(-cell * 0.08, cell * 0.08)
        _draw_shape(draw, shape, cx, cy, cell * rng.uniform(0.3, 0.38), COLORS[color])
    return image


def _plural(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def scene_texts(shape: str, color: str, count: int) -> dict[str, Any]:
    """Captions and (question, answer) pairs of one scene."""
    things = f"{COUNT_WORDS[count - 1]} {color} {_plural(shape, count)}"
    captions = [
        f"a picture of {things}.",
        f"{things} on a gray background.",
        f"there {'is' if count == 1 else 'are'} {things} in the image.",
    ]
    qa = [
        (f"what color is the {shape}?" if count == 1 else f"what color are the {shape}s?", color),
        (f"how many {shape}s are there?", str(count)),
        ("what shape is shown?", shape),
    ]
    return {"captions": captions, "qa": qa}


def _options(answer: str, rng: np.random.Generator) -> list[str]:
    """Four choices containing `answer`, from the answer's own kind (color/count/shape)."""
    for space in (list(COLORS), [str(c) for c in range(1, 5)], list(SHAPES) + ["star"]):
        if answer in space:
            others = [x for x in space if x != answer]
            choices = [answer] + list(rng.choice(others, size=3, replace=False))
            return [str(c) for c in rng.permutation(choices)]
    raise ValueError(answer)


def _write_split(root: str, split: str, count: int, rng: np.random.Generator) -> dict[str, str]:
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    captions, vqa, mc = [], [], []
    for i in tqdm(range(count), desc=f"demo {split}", leave=False):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        n = int(rng.integers(1, 5))
        image_rel = f"{split}/{split}_{i:06d}.png"
        render_scene(shape, color, n, rng).save(os.path.join(root, "images", image_rel))
        texts = scene_texts(shape, color, n)
        image_id = f"{split}_{i:06d}"
        if split == "train":
            captions += [
                {"image": image_rel, "caption": c, "image_id": image_id} for c in texts["captions"]
            ]
        else:
            captions.append(
                {"image": image_rel, "caption": texts["captions"], "image_id": image_id}
            )
        for k, (question, answer) in enumerate(texts["qa"]):
            qid = i * 10 + k
            vqa.append(
                {
                    "question_id": qid,
                    "question": question,
                    "answer": [answer] * 10,
                    "image": image_rel,
                    "dataset": "vqa",
                }
            )
            choices = _options(answer, rng)
            mc.append(
                {
                    "question_id": f"{split}_{qid}",
                    "question": question,
                    "image": image_rel,
                    "choices": choices,
                    "correct_choice_idx": choices.index(answer),
                    "direct_answers": [answer] * 10,
                }
            )
    paths = {}
    for kind, rows in (("caption", captions), ("vqa", vqa), ("mc", mc)):
        paths[f"{kind}_{split}"] = os.path.join(root, "annotations", f"{kind}_{split}.json")
        with open(paths[f"{kind}_{split}"], "w") as f:
            json.dump(rows, f)
    return paths


def write_demo_dataset(root: str, num_train: int = 600, num_eval: int = 100, seed: int = 0) -> dict:
    """Writes the demo images and annotation files under `root`; returns the paths written:
    `image_root` and `{caption,vqa,mc}_{train,eval}` annotation files. Deterministic in `seed`."""
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    paths = {"image_root": os.path.join(root, "images")}
    # Separate streams per split, so the held-out images do not depend on num_train.
    paths.update(_write_split(root, "train", num_train, np.random.default_rng([seed, 0])))
    paths.update(_write_split(root, "eval", num_eval, np.random.default_rng([seed, 1])))
    return paths


def ensure_demo_dataset(
    root: str, num_train: int = 600, num_eval: int = 100, seed: int = 0
) -> dict:
    """`write_demo_dataset` unless `root` already holds the same demo (checked by a manifest).

    This is the `demo_shapes` generator of `data_pipelines.sources`: the demo config's entries
    name it, and whichever process reads them first renders the files. A lock file serializes
    processes that start together on one machine (the others then find the manifest)."""
    if "://" in root:  # a bucket: rendered locally, then copied up
        return _ensure_in_bucket(root, num_train, num_eval, seed)
    os.makedirs(root, exist_ok=True)
    manifest = os.path.join(root, "manifest.json")
    wanted = {"num_train": num_train, "num_eval": num_eval, "seed": seed}
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(manifest):
            with open(manifest) as f:
                saved = json.load(f)
            if saved.get("args") == wanted:
                return saved["paths"]
        paths = write_demo_dataset(root, num_train, num_eval, seed)
        with open(manifest, "w") as f:
            json.dump({"args": wanted, "paths": paths}, f)
    return paths


def _ensure_in_bucket(root: str, num_train: int, num_eval: int, seed: int) -> dict:
    """`ensure_demo_dataset` for a bucket root (gs://...): no file locks there, so the demo is
    rendered into a local temporary directory and copied up, manifest last."""
    manifest = epath.Path(root) / "manifest.json"
    wanted = {"num_train": num_train, "num_eval": num_eval, "seed": seed}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("args") == wanted:
            return saved["paths"]
    with tempfile.TemporaryDirectory() as local:
        local_paths = write_demo_dataset(local, num_train, num_eval, seed)
        for directory, _, names in os.walk(local):
            for name in names:
                source = os.path.join(directory, name)
                target = epath.Path(root) / os.path.relpath(source, local)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(epath.Path(source).read_bytes())
    paths = {key: root.rstrip("/") + value[len(local) :] for key, value in local_paths.items()}
    manifest.write_text(json.dumps({"args": wanted, "paths": paths}))
    return paths


def _demo_options(data_config) -> list[dict]:
    """The distinct `demo_shapes` options named by a data config's entries (usually one)."""
    found = []
    entries = list(data_config.get("datasets") or []) + list(data_config.get("eval_datasets") or [])
    for entry in entries:
        options = dict(entry.get("generate") or {})
        if options.pop("kind", None) == "demo_shapes" and options not in found:
            found.append(options)
    return found


def ensure_from_config(data_config) -> dict | None:
    """Writes the demo data a data config's entries name (once, e.g. before starting several
    processes that would otherwise all find it missing); the paths of the first, or None."""
    paths = [ensure_demo_dataset(**options) for options in _demo_options(data_config)]
    return paths[0] if paths else None


def demo_corpus() -> list[str]:
    """Every text the demo can produce: scene captions/questions/answers, all instruction templates
    (placeholders removed) and the printable ASCII characters (so no character maps to [UNK])."""
    lines = [string.ascii_lowercase, string.ascii_uppercase, string.digits, string.punctuation]
    for shape in SHAPES:
        for color in COLORS:
            for count in range(1, 5):
                texts = scene_texts(shape, color, count)
                lines += texts["captions"] + [f"{q} {a}" for q, a in texts["qa"]]
    for pool in templates.TEMPLATES.values():
        lines += [
            t.replace("{question}", "")
            .replace("{answer}", "")
            .replace("{options}", "")
            .replace("{history}", "")
            .replace("{text}", "")
            for t in pool
        ]
    lines += list(templates.MULTIPLE_CHOICE_TEMPLATES) + [
        "OCR tokens:",
        "Question: Short answer:",
        "Options: star",
    ]
    return lines


def _wordpiece_vocab(corpus: list[str]) -> list[str]:
    """BERT-style vocab, deterministic (the `tokenizers` WordPiece trainer breaks ties in hash
    order): specials, every single character and its "##" continuation, then every whole word of
    the corpus (BERT normalization + pre-tokenization), so demo text never splits into pieces."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    for line in corpus:
        words.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line)))
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    return specials + chars + ["##" + c for c in chars] + sorted(w for w in words if len(w) > 1)


def build_tokenizer_assets(out_dir: str = ASSETS_DIR) -> dict[str, str]:
    """Trains the demo WordPiece vocab ([PAD]=0 [UNK] [CLS] [SEP] [MASK] [DEC]) and SentencePiece
    model (T5 conventions: pad=0, eos=1, unk=2, no bos) on `demo_corpus()`. Deterministic."""
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    corpus = demo_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = os.path.join(tmp, "corpus.txt")
        with open(corpus_path, "w") as f:
            f.write("\n".join(corpus * 4) + "\n")
        vocab_path = os.path.join(out_dir, "demo_wordpiece_vocab.txt")
        with open(vocab_path, "w") as f:
            f.write("".join(token + "\n" for token in _wordpiece_vocab(corpus)))
        prefix = os.path.join(out_dir, "demo_spm")
        spm.SentencePieceTrainer.Train(
            input=corpus_path,
            model_prefix=prefix,
            vocab_size=400,
            model_type="unigram",
            character_coverage=1.0,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            hard_vocab_limit=False,
            num_threads=1,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
        # The .model holds everything; keep the committed assets minimal.
        os.remove(prefix + ".vocab")
    return {"qformer_vocab": vocab_path, "lm_spm": prefix + ".model"}


if __name__ == "__main__":
    print(build_tokenizer_assets())
