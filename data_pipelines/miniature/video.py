"""Encoded video clips for the miniature (PyAV), and pre-extracted frame directories.

The video QA sets ship video files, not frames: MSVD's YouTubeClips are AVI (MPEG-4 part 2),
MSR-VTT's clips are MP4 (H.264), iVQA's clips are WebM downloaded from YouTube (VP9). The codec of
each real file is not recorded anywhere we could check; these are the common codecs of those
containers, and every one of them decodes with PyAV/FFmpeg like the real files do.
"""

from __future__ import annotations

import os

import numpy as np

# container extension -> (encoder, its options, the codec name a decoder reports). Realtime VP9
# keeps the tiny clips fast to write.
CODECS = {
    ".avi": ("mpeg4", {}, "mpeg4"),
    ".mp4": ("libx264", {"crf": "30"}, "h264"),
    ".webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}, "vp9"),
}
FPS = 8


def write_video(path: str, frames: np.ndarray, fps: int = FPS) -> str:
    """Encode `frames` `[F, H, W, 3]` uint8 (H, W even) to `path`; the container and codec follow
    the extension (CODECS). Returns the decoder's codec name (e.g. "h264")."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - the message is the point
        raise ImportError("writing the miniature's video clips needs PyAV: pip install av") from e
    extension = os.path.splitext(path)[1]
    if extension not in CODECS:
        raise ValueError(f"{path}: video extension must be one of {sorted(CODECS)}")
    num_frames, height, width, channels = frames.shape
    if channels != 3 or height % 2 or width % 2:
        raise ValueError(f"{path}: frames must be [F, even H, even W, 3], got {frames.shape}")
    encoder, options, codec_name = CODECS[extension]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(encoder, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return codec_name


def write_frame_dir(directory: str, frames: np.ndarray) -> list[str]:
    """Frames as `directory/00001.jpg, 00002.jpg, ...` (ffmpeg's `%05d.jpg` numbering, from 1)."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    paths = []
    for index, pixels in enumerate(frames, start=1):
        path = os.path.join(directory, f"{index:05d}.jpg")
        Image.fromarray(pixels).save(path, quality=85)
        paths.append(path)
    return paths
