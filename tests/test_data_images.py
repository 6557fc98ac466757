"""Image preprocessing equals HF BlipImageProcessor (PIL backend) on real photographs, any mode."""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from data_pipelines import images

transformers = pytest.importorskip("transformers")
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "camera")  # camera is grayscale (L)


@pytest.fixture(scope="module")
def hf_processor():
    return BlipImageProcessorPil(size={"height": 224, "width": 224})


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "LA", "PA"])
def test_equals_hf_blip_processor(hf_processor, photo, mode):
    image = Image.fromarray(getattr(skimage.data, photo)()).convert(mode)
    if mode == "RGBA":  # a real alpha channel, so the white compositing is exercised
        alpha = np.linspace(0, 255, image.width, dtype=np.uint8)[None].repeat(image.height, 0)
        image.putalpha(Image.fromarray(alpha))
    reference = hf_processor(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = images.preprocess_image(image, 224)
    assert ours.dtype == np.float32 and ours.shape == (224, 224, 3)
    np.testing.assert_array_equal(ours, reference)


def test_sixteen_bit_grayscale_uses_full_range(hf_processor):
    """I;16 is scaled to 8 bits by 65535 (PIL alone would clip >255 to white), then equals HF on
    the 8-bit image."""
    camera8 = skimage.data.camera()
    sixteen = Image.fromarray(camera8.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    reference = hf_processor(Image.fromarray(camera8), return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(
        images.preprocess_image(sixteen, 224), reference.transpose(1, 2, 0)
    )


def test_augmentation_is_seeded_and_changes_pixels():
    image = Image.fromarray(skimage.data.chelsea())
    plain = images.preprocess_image(image, 64)
    a = images.preprocess_image(image, 64, np.random.default_rng(3))
    b = images.preprocess_image(image, 64, np.random.default_rng(3))
    c = images.preprocess_image(image, 64, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert a.shape == plain.shape == (64, 64, 3)
    assert not np.array_equal(a, plain) and not np.array_equal(a, c)


def test_random_resized_crop_box_scale_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = images.random_resized_crop_box(300, 200, rng)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        assert 0.5 * 300 * 200 * 0.95 <= w * h <= 300 * 200  # scale (0.5, 1.0), rounding slack


def test_bad_files_raise_bad_image_error(tmp_path):
    with pytest.raises(images.BadImageError, match="missing.jpg"):
        images.load_image(str(tmp_path / "missing.jpg"))
    Image.fromarray(skimage.data.coffee()).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(images.BadImageError, match="truncated.jpg"):
        images.load_image(str(tmp_path / "truncated.jpg"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(images.BadImageError, match="text.png"):
        images.load_image(str(tmp_path / "text.png"))


def test_clip_frames_uniform_from_directory_and_gif(tmp_path):
    assert images.uniform_frame_indices(8, 4) == [1, 3, 5, 7]
    assert images.uniform_frame_indices(2, 4) == [0, 0, 1, 1]
    frames = [Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i in range(8)]
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    for i, frame in enumerate(frames):
        frame.save(clip_dir / f"{i:03d}.png")
    from_dir = images.load_clip_frames(str(clip_dir), 4)
    assert [f.getpixel((0, 0))[0] for f in from_dir] == [20, 60, 100, 140]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    from_gif = images.load_clip_frames(str(tmp_path / "clip.gif"), 4)
    assert len(from_gif) == 4 and all(f.mode == "RGB" for f in from_gif)
    assert [f.getpixel((0, 0))[0] for f in from_gif] == [f.getpixel((0, 0))[0] for f in from_dir]
    assert images.preprocess_clip(from_gif, 16).shape == (4, 16, 16, 3)
    with pytest.raises(images.BadImageError, match="holds no frame"):
        (tmp_path / "empty").mkdir()
        images.load_clip_frames(str(tmp_path / "empty"), 4)
