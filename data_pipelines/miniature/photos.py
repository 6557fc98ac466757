"""Real photographs for the miniature: scikit-image's sample images, small, in the real sets' modes.

Each `Photo` pairs a picture shipped with scikit-image (`skimage.data`, no download) with texts
that describe it, so captions, questions and answers in the miniature agree with the pixels.
`render(photo, mode, size)` gives a PIL image of at most `size` pixels on its long side in the
mode a dataset's files have: "RGB", "L" (grayscale JPEGs exist in COCO, Visual Genome, OpenImages),
"RGBA" (transparent PNGs: IconQA, ScienceQA, HatefulMemes) or "P" (palette PNGs).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from PIL import Image, ImageDraw

MODES = ("RGB", "L", "RGBA", "P")


@dataclasses.dataclass(frozen=True)
class Photo:
    """A scikit-image sample picture and texts true of it."""

    file: str  # file name in skimage's data directory
    noun: str  # the main thing shown (short answers, A-OKVQA choices)
    captions: tuple[str, ...]  # 5 captions, COCO style
    qa: tuple[tuple[str, str], ...]  # (question, short answer)
    ocr: tuple[str, ...] = ()  # words written in the picture (scene-text datasets)


PHOTOS = (
    Photo(
        "astronaut.png",
        "astronaut",
        (
            "A woman astronaut in a white spacesuit poses in front of a flag.",
            "An astronaut smiling for an official portrait.",
            "A smiling woman in an orange and white space suit.",
            "Portrait of an astronaut with the american flag behind her.",
            "A female astronaut posing next to a model of a space shuttle.",
        ),
        (("What is the woman wearing?", "spacesuit"), ("Is she smiling?", "yes")),
        ("NASA",),
    ),
    Photo(
        "coffee.png",
        "coffee",
        (
            "A cup of coffee on a saucer with a spoon.",
            "A white cup filled with coffee sits on a plate.",
            "Close up of a mug of hot coffee on a table.",
            "A coffee cup and a small spoon on a red surface.",
            "A cup of black coffee served on a saucer.",
        ),
        (("What drink is in the cup?", "coffee"), ("What color is the cup?", "white")),
    ),
    Photo(
        "chelsea.png",
        "cat",
        (
            "An orange tabby cat looking to the side.",
            "A close up of a striped cat's face.",
            "A ginger cat sitting and looking away from the camera.",
            "The head of a tabby cat with long white whiskers.",
            "A cat with green eyes looks to the left.",
        ),
        (("What animal is this?", "cat"), ("What color is the cat?", "orange")),
    ),
    Photo(
        "rocket.jpg",
        "rocket",
        (
            "A rocket standing on a launch pad.",
            "A space rocket ready for launch under a blue sky.",
            "A tall white rocket next to its launch tower.",
            "A launch pad with a rocket and a service structure.",
            "A rocket on the pad before lift off.",
        ),
        (("What is on the launch pad?", "rocket"), ("Is it daytime?", "yes")),
    ),
    Photo(
        "motorcycle_left.png",
        "motorcycle",
        (
            "A motorcycle parked in a room with a gray wall.",
            "A shiny motorbike standing on its kickstand indoors.",
            "A motorcycle seen from the side in a workshop.",
            "Close up of a parked motorcycle.",
            "A motorbike with a black seat and chrome parts.",
        ),
        (("What vehicle is shown?", "motorcycle"), ("How many wheels are visible?", "2")),
    ),
    Photo(
        "camera.png",
        "camera",
        (
            "A black and white photo of a man with a camera on a tripod.",
            "A photographer standing in a field behind his camera.",
            "A man in a dark coat looks into a camera.",
            "A person taking a picture outdoors with a tripod.",
            "An old photo of a cameraman on a lawn.",
        ),
        (("What is the man using?", "camera"), ("Is this photo in color?", "no")),
    ),
    Photo(
        "coins.png",
        "coins",
        (
            "Old coins laid out in rows on a dark background.",
            "A collection of silver coins.",
            "Rows of round coins photographed from above.",
            "Many coins arranged in a grid.",
            "A black and white picture of antique coins.",
        ),
        (("What objects are shown?", "coins"), ("Is this photo in color?", "no")),
    ),
    Photo(
        "moon.png",
        "moon",
        (
            "The surface of the moon covered with craters.",
            "A gray picture of lunar craters.",
            "Close view of the rough surface of the moon.",
            "Craters and plains on the moon.",
            "A black and white photograph of the moon's surface.",
        ),
        (("What is shown in the picture?", "moon"), ("Are there craters?", "yes")),
    ),
    Photo(
        "horse.png",
        "horse",
        (
            "The silhouette of a horse standing still.",
            "A black outline of a horse on a plain background.",
            "A drawing of a horse seen from the side.",
            "A dark shape of a horse with its head up.",
            "A simple horse silhouette.",
        ),
        (("What animal is this?", "horse"), ("What color is the horse?", "black")),
    ),
    Photo(
        "logo.png",
        "logo",
        (
            "The scikit image logo with a snake shaped drawing.",
            "A colorful logo with the words scikit image.",
            "A software logo on a white background.",
            "The logo of an image processing library.",
            "A round logo next to the name of a python package.",
        ),
        (("What does the logo say?", "scikit image"), ("Is there text in the image?", "yes")),
        ("scikit", "image"),
    ),
    Photo(
        "page.png",
        "page",
        (
            "A scanned page of printed text.",
            "A page from a book with several paragraphs.",
            "Black text printed on a white page.",
            "A document with lines of small print.",
            "A photocopy of a page of text.",
        ),
        (("What is on the page?", "text"), ("Is the page printed?", "yes")),
        ("Region", "Growing", "the", "image"),
    ),
    Photo(
        "hubble_deep_field.jpg",
        "galaxies",
        (
            "A telescope image of many distant galaxies.",
            "Galaxies of different colors against black space.",
            "A deep field photograph from a space telescope.",
            "Hundreds of tiny galaxies in the night sky.",
            "A view of deep space full of stars and galaxies.",
        ),
        (("What is shown in the image?", "galaxies"), ("Is this taken in space?", "yes")),
    ),
    Photo(
        "ihc.png",
        "tissue",
        (
            "A microscope image of stained tissue.",
            "Cells stained brown and blue under a microscope.",
            "A close up of a tissue sample.",
            "A slide of cells seen through a microscope.",
            "Stained biological tissue at high magnification.",
        ),
        (("What kind of image is this?", "microscope"), ("Are there cells?", "yes")),
    ),
    Photo(
        "chessboard_RGB.png",
        "checkerboard",
        (
            "A black and white checkerboard pattern.",
            "Squares alternating between black and white.",
            "A chess board seen from above.",
            "A grid of dark and light squares.",
            "A checkered pattern filling the picture.",
        ),
        (("What pattern is shown?", "checkerboard"), ("How many colors are there?", "2")),
    ),
)


def skimage_data_dir() -> str:
    """The directory of scikit-image's bundled sample images (a test dependency)."""
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - the message is the point
        raise ImportError(
            "the miniature datasets use scikit-image's sample photographs: "
            "pip install 'scikit-image>=0.24,<0.27' (see requirements-test.txt)"
        ) from e
    return os.path.dirname(skimage.data.__file__)


@functools.cache
def _load(file: str) -> Image.Image:
    path = os.path.join(skimage_data_dir(), file)
    with Image.open(path) as image:
        image.load()
        # One thumbnail at twice the largest size we render keeps the big ones (hubble) cheap.
        image.thumbnail((192, 192), Image.Resampling.LANCZOS)
        return image.copy()


def _with_alpha(image: Image.Image) -> Image.Image:
    """RGBA; a picture without transparency gets an elliptical cut-out (transparent corners)."""
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        return image.convert("RGBA")
    rgba = image.convert("RGBA")
    mask = Image.new("L", rgba.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, rgba.width - 1, rgba.height - 1), fill=255)
    rgba.putalpha(mask)
    return rgba


def render(photo: Photo, mode: str, size: int) -> Image.Image:
    """`photo` in PIL `mode`, its long side `size` pixels (aspect ratio kept)."""
    if mode not in MODES:
        raise ValueError(f"image mode must be one of {MODES}, got {mode!r}")
    image = _load(photo.file).copy()
    scale = size / max(image.size)
    image = image.resize(
        (max(8, round(image.width * scale)), max(8, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    if mode == "RGBA":
        return _with_alpha(image)
    if image.mode == "RGBA":  # flatten onto white, as a viewer shows it, not onto the hidden RGB
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    if mode == "P":
        return image.convert("RGB").quantize(colors=64)
    return image.convert(mode)


def pan_frames(photo: Photo, num_frames: int, width: int, height: int) -> np.ndarray:
    """A camera pan across `photo`: `num_frames` RGB crops `[F, height, width, 3]` uint8 that slide
    left to right (and a little down), so consecutive frames differ the way video frames do."""
    source = _load(photo.file).convert("RGB")
    scale = max(2 * width / source.width, 1.5 * height / source.height)
    source = source.resize((round(source.width * scale), round(source.height * scale)))
    pixels = np.asarray(source)
    max_x, max_y = pixels.shape[1] - width, pixels.shape[0] - height
    frames = [
        pixels[
            round(max_y * t * 0.5) : round(max_y * t * 0.5) + height,
            round(max_x * t) : round(max_x * t) + width,
        ]
        for t in np.linspace(0.0, 1.0, num_frames)
    ]
    return np.ascontiguousarray(np.stack(frames))
