"""Training photos: folder checks, conversions, preprocessing and the deterministic per-step dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steerguide.errors import UserError
from steerguide.train.data import PersonalizationDataset, load_images, preprocess

DREAMBENCH = Path("/work/shared/dreambench-sample")


def test_odd_modes_and_sizes_are_converted(tmp_path):
    Image.new("L", (37, 53), 128).save(tmp_path / "gray.png")
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent: must become white, not black
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    Image.fromarray(np.full((20, 25), 4000, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.new("P", (9, 11)).save(tmp_path / "palette.gif")
    (tmp_path / "notes.txt").write_text("not an image: skipped")
    loaded = dict(load_images(tmp_path))
    assert sorted(loaded) == ["deep.png", "gray.png", "palette.gif", "rgba.png"]
    assert all(im.mode == "RGB" for im in loaded.values())
    assert loaded["gray.png"].size == (37, 53) and loaded["gray.png"].getpixel((5, 5)) == (128, 128, 128)
    assert loaded["rgba.png"].getpixel((5, 5)) == (255, 255, 255)
    assert loaded["rgba.png"].getpixel((0, 0)) == (0, 0, 255)
    for image in loaded.values():
        for crop in ("center", "random", "resize"):
            x, _, _ = preprocess(image, 32, crop)
            assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_images(tmp_path / "nope")
    with pytest.raises(UserError, match="is empty"):
        load_images(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no usable image.*readme.txt"):
        load_images(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        load_images(tmp_path)
    with pytest.raises(UserError, match="no training images"):
        load_images([])


def test_preprocess_center_crop_keeps_the_middle_and_records_sdxl_conditioning():
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (16, 0, 48, 32))  # white middle square, black sides
    x, original, crop = preprocess(image, 16, "center")
    assert original == (32, 64) and crop == (0, 8)  # resized to 32×16, 8 px cut on the left
    assert torch.allclose(x[:, :, 1:-1], torch.ones(3, 16, 14)) and x.min() > 0.5  # bicubic blurs the edge
    squashed, _, _ = preprocess(image, 16, "resize")
    assert squashed[:, :, 0].max() < 0  # the black sides survive a squash


def test_dataset_is_a_pure_function_of_seed_and_index():
    images = [Image.new("RGB", (16, 16), (i * 60, 0, 0)) for i in range(4)]
    a = PersonalizationDataset(images, 12, 16, crop="random", random_flip=True, seed=3)
    b = PersonalizationDataset(images, 12, 16, crop="random", random_flip=True, seed=3)
    assert all(torch.equal(a[k]["pixels"], b[k]["pixels"]) for k in (0, 5, 11))
    # each epoch shows every photo once
    for epoch in range(3):
        reds = sorted(round(float(a[4 * epoch + i]["pixels"][0, 0, 0]), 3) for i in range(4))
        assert reds == sorted(round(i * 60 / 127.5 - 1, 3) for i in range(4))
    c = PersonalizationDataset(images, 12, 16, seed=4)
    assert [float(c[k]["pixels"][0, 0, 0]) for k in range(4)] != [
        float(a[k]["pixels"][0, 0, 0]) for k in range(4)
    ]


@pytest.mark.skipif(not DREAMBENCH.is_dir(), reason="dreambench-sample not present")
def test_real_dreambench_photos():
    subjects = sorted(p for p in DREAMBENCH.iterdir() if p.is_dir())
    assert subjects
    for folder in subjects:
        loaded = load_images(folder)
        names = sorted(p.name for p in folder.glob("*.jpg"))
        assert [n for n, _ in loaded] == names
        dataset = PersonalizationDataset([im for _, im in loaded], len(loaded), 64)
        for k in range(len(loaded)):
            item = dataset[k]
            assert item["pixels"].shape == (3, 64, 64)
            assert item["pixels"].std() > 0.05  # a real photo, not a blank
            assert tuple(item["original_size"].tolist()) in {(im.height, im.width) for _, im in loaded}
