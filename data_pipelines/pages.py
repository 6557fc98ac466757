"""Static HTML pages of examples: what `data_pipelines.preview --out=DIR` and the eval job write.

One self-contained file per page: plain HTML and CSS, each picture embedded as a small JPEG
(`data:` URI, at most `THUMBNAIL` pixels a side), so a page opens offline, from a bucket download
or an e-mail attachment alike, with nothing beside it. A page is a title, a few summary lines and
one card per example: its pictures (an image, or a clip's frames side by side), then labelled
texts (instruction, target, prediction, references...), optionally marked correct / partly
correct / wrong.

The pictures come from what the pipeline has at hand: a record's media (`media_pictures`: image
or frame paths, a video file, or the bytes `data_pipelines.prepare` embedded) or the model's
input (`pixel_pictures`: pixel_values [H, W, 3] or [F, H, W, 3], normalized as
`data_pipelines.images` does).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from PIL import Image

from data_pipelines import images

THUMBNAIL = 224  # longest side of an embedded picture, in pixels
VERDICTS = {"correct": "✓ correct", "partial": "◐ partly correct", "wrong": "✗ wrong"}

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 24px; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 6px; overflow-wrap: anywhere; }
.summary { color: #555; margin: 0 0 18px; }
.summary p { margin: 2px 0; }
.card { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 16px; background: #fff;
        border: 1px solid #ddd; border-radius: 8px; padding: 12px; margin: 0 0 12px; border-left: 6px solid #bbb; }
.card.correct { border-left-color: #2e9d4f; } .card.wrong { border-left-color: #d0453a; }
.card.partial { border-left-color: #e0a030; }
.pictures { display: flex; align-items: flex-start; gap: 4px; flex: none; }
.pictures img { height: 180px; width: auto; max-width: 320px; object-fit: contain;
                border-radius: 4px; }
.pictures.clip img { height: 100px; max-width: 150px; }
.texts { flex: 1; min-width: 280px; }
.texts .title { font-weight: 600; margin: 0 0 4px; }
.texts .label { color: #777; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.texts .value { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0 0 6px; }
.verdict { font-weight: 600; margin: 0 0 6px; }
.note { color: #b00; font-size: 13px; }
"""


@dataclasses.dataclass
class Card:
    """One example on a page: `pictures` (data: URIs), `texts` (label, text) in order, a
    `verdict` (a VERDICTS key, or None) and `note` (e.g. why a picture is missing)."""

    title: str
    pictures: list[str]
    texts: list[tuple[str, str]]
    verdict: str | None = None
    note: str = ""


def picture_uri(picture: Image.Image | np.ndarray) -> str:
    """A PIL image or a uint8 array [H, W, 3] -> a `data:image/jpeg;base64,...` thumbnail."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    image = images.to_rgb(image)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pixel_pictures(pixel_values: np.ndarray) -> list[str]:
    """The model's input [H, W, 3] or [F, H, W, 3] (CLIP-normalized float) -> data: URIs."""
    pixels = np.asarray(pixel_values, dtype=np.float32)
    frames = pixels[None] if pixels.ndim == 3 else pixels
    mean, std = np.asarray(images.CLIP_MEAN), np.asarray(images.CLIP_STD)
    return [
        picture_uri(np.clip((frame * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8))
        for frame in frames
    ]


def media_pictures(record: Mapping[str, Any], num_frames: int = 4) -> list[str]:
    """A record's media (as `data_pipelines.sources` gives it) -> data: URIs: its image, or
    `num_frames` frames of its clip. Raises images.BadImageError for unreadable media."""
    if "image_bytes" in record:
        return [picture_uri(Image.open(io.BytesIO(record["image_bytes"])))]
    if "frame_bytes" in record:
        chosen = images.uniform_frame_indices(len(record["frame_bytes"]), num_frames)
        return [picture_uri(Image.open(io.BytesIO(record["frame_bytes"][i]))) for i in chosen]
    if "video_bytes" in record:
        clip = images.decode_video(io.BytesIO(record["video_bytes"]), num_frames)
        return [picture_uri(frame) for frame in clip]
    if record.get("frames") or record.get("video"):
        clip = images.load_clip_frames(record.get("frames") or record["video"], num_frames)
        return [picture_uri(frame) for frame in clip]
    if record.get("image"):
        return [picture_uri(images.load_image(record["image"]))]
    return []


def text(value: Any) -> str:
    """A field's value as page text: lists one item a line, numbers as they are."""
    if isinstance(value, (list, tuple)):
        return "\n".join(text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render(title: str, summary: Sequence[str], cards: Sequence[Card]) -> str:
    """The page's HTML (every text escaped)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<div class="summary">' + "".join(f"<p>{html.escape(s)}</p>" for s in summary) + "</div>",
    ]
    for card in cards:
        kind = f" {card.verdict}" if card.verdict else ""
        clip = " clip" if len(card.pictures) > 1 else ""
        out.append(f'<div class="card{kind}"><div class="pictures{clip}">')
        out += [f'<img src="{uri}" alt="{html.escape(card.title)}">' for uri in card.pictures]
        out.append(f'</div><div class="texts"><div class="title">{html.escape(card.title)}</div>')
        if card.verdict:
            out.append(f'<div class="verdict">{html.escape(VERDICTS[card.verdict])}</div>')
        for label, value in card.texts:
            out.append(f'<div class="label">{html.escape(label)}</div>')
            out.append(f'<div class="value">{html.escape(value)}</div>')
        if card.note:
            out.append(f'<div class="note">{html.escape(card.note)}</div>')
        out.append("</div></div>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write(path: str, title: str, summary: Sequence[str], cards: Sequence[Card]) -> str:
    """Write the page to `path` (a local or bucket path); returns the path."""
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(title, summary, cards), encoding="utf-8")
    return str(target)
