"""Image and video-clip preprocessing: decode -> RGB -> (augment) -> bicubic resize -> CLIP normalize.

The eval path is bit-for-bit HF `BlipImageProcessor` (PIL backend): transparency composited on
white, PIL bicubic resize of the uint8 RGB image, rescale by 1/255 in float64 then float32, and
`(x - mean) / std` in float32. Training augmentation (LAVIS `blip_image_train`: RandomResizedCrop
with scale (0.5, 1.0) + horizontal flip) sits behind `augment=True` and draws from a numpy
Generator, so it is as deterministic as the rest of the pipeline.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")


class BadImageError(Exception):
    """An image or clip that cannot be decoded (missing, truncated, unreadable); names the path."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white (as HF `convert_to_rgb`).

    16/32-bit grayscale ("I;16", "I", "F") is scaled to 8 bits by its full range first: PIL's own
    conversion would clip everything above 255 to white.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(
            np.clip(np.rint(array / scale * 255.0), 0, 255).astype(np.uint8), "L"
        )
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str) -> Image.Image:
    """Opens and fully decodes an image file (so truncation errors surface here), as RGB."""
    try:
        # A bucket path (gs://..., your own data) is read through etils.epath.
        source = io.BytesIO(epath.Path(path).read_bytes()) if "://" in str(path) else path
        with Image.open(source) as image:
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImageError(f"cannot read image {path!r}: {error}") from error


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params, with a numpy Generator. Returns (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    # Fallback (as torchvision): the largest centred crop with an in-range aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def preprocess_image(
    image: Image.Image, image_size: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """PIL image (any mode) -> float32 [image_size, image_size, 3], CLIP-normalized.

    With `rng` (training augmentation): random resized crop (scale 0.5-1) + horizontal flip (p=0.5).
    """
    image = to_rgb(image)
    if rng is not None:
        left, top, w, h = random_resized_crop_box(image.width, image.height, rng)
        image = image.crop((left, top, left + w, top + h))
        if rng.uniform() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Straight to a square, aspect ratio not kept: HF's BlipImageProcessor (and LAVIS's eval
    # transform) resize to (size, size) without a centre crop.
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), resample=Image.Resampling.BICUBIC)
    # Same arithmetic and dtypes as HF's rescale/normalize, so the values are identical.
    pixels = (np.asarray(image, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    return (pixels - mean) / std


def uniform_frame_indices(num_available: int, num_frames: int) -> list[int]:
    """Indices of `num_frames` frames spread uniformly over a clip: the centre of each of
    `num_frames` equal segments (repeats frames when the clip is shorter than `num_frames`)."""
    if num_available <= 0:
        raise ValueError("a clip with no frames")
    return [
        min(num_available - 1, int((i + 0.5) * num_available / num_frames))
        for i in range(num_frames)
    ]


def decode_video(source: str | io.BytesIO, num_frames: int, where: str = "") -> list[Image.Image]:
    """A video file (path or bytes) -> `num_frames` RGB frames sampled uniformly (PyAV).

    Every frame is decoded and the sampled ones kept: the frame count in a container's header
    is often missing or wrong (AVI, WebM), and the clips of the video QA sets are seconds long.
    """
    import av  # local: only video datasets need FFmpeg

    where = where or str(source)
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise BadImageError(f"video {where!r} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [frame.to_image() for frame in container.decode(stream)]
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as error:
        raise BadImageError(f"cannot read video {where!r}: {error}") from error
    if not frames:
        raise BadImageError(f"video {where!r} decodes to no frames")
    return [to_rgb(frames[i]) for i in uniform_frame_indices(len(frames), num_frames)]


def load_clip_frames(source: str | Sequence[str], num_frames: int) -> list[Image.Image]:
    """A clip -> `num_frames` RGB frames sampled uniformly.

    `source` is a list of frame paths, a directory of frame images (sorted by name), a video
    file (`VIDEO_SUFFIXES`, decoded with PyAV), or one multi-frame file PIL can read (GIF,
    multi-page TIFF, ...).
    """
    if isinstance(source, str) and source.lower().endswith(VIDEO_SUFFIXES):
        if not epath.Path(source).is_file():  # a local path or a bucket (gs://)
            raise BadImageError(f"cannot read video {source!r}: no such file")
        if "://" in source:  # PyAV opens local paths; a bucket's video is read into memory
            return decode_video(io.BytesIO(epath.Path(source).read_bytes()), num_frames, source)
        return decode_video(source, num_frames)
    if isinstance(source, (list, tuple)):
        paths = list(source)
    elif epath.Path(source).is_dir():
        paths = sorted(
            os.path.join(source, name.name)
            for name in epath.Path(source).iterdir()
            if name.name.lower().endswith(IMAGE_SUFFIXES)
        )
        if not paths:
            raise BadImageError(f"clip directory {source!r} holds no frame images")
    else:
        try:
            # A bucket path (gs://) is read through etils.epath.
            opened = io.BytesIO(epath.Path(source).read_bytes()) if "://" in source else source
            with Image.open(opened) as clip:
                count = getattr(clip, "n_frames", 1)
                frames = []
                for index in uniform_frame_indices(count, num_frames):
                    clip.seek(index)
                    clip.load()
                    frames.append(to_rgb(clip.copy()))
                return frames
        except (OSError, ValueError, EOFError, SyntaxError) as error:
            raise BadImageError(f"cannot read clip {source!r}: {error}") from error
    if not paths:
        raise BadImageError("a clip with an empty frame list")
    return [load_image(paths[i]) for i in uniform_frame_indices(len(paths), num_frames)]


def preprocess_clip(
    frames: Sequence[Image.Image], image_size: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frames -> float32 [F, image_size, image_size, 3]. One augmentation draw for the whole clip."""
    if rng is None:
        return np.stack([preprocess_image(frame, image_size) for frame in frames])
    # Every frame gets a Generator with the same seed, hence the same crop box and flip: the clip
    # is augmented as one piece, so objects do not jump between frames.
    seed = int(rng.integers(0, 2**31 - 1))
    return np.stack(
        [preprocess_image(frame, image_size, np.random.default_rng(seed)) for frame in frames]
    )
