"""vit_training.data: the image, IDX, listing, subset and Fashion-MNIST helpers every task shares.

Every file is generated in tmp_path: PNGs in the PIL modes the readers handle, IDX files written
by hand from LeCun's header layout (so `read_idx` is checked against the format, not only
against `write_idx`).
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vit_training.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    IMAGE_EXTENSIONS,
    SUBSET_SEED,
    list_images,
    read_grey,
    read_idx,
    read_image,
    read_rgb,
    subset_indices,
    write_idx,
)

READERS = [read_image, read_rgb, read_grey]


# ------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_a_corrupt_image_is_one_line_naming_the_file(tmp_path: Path, reader) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    with pytest.raises(ValueError) as error:
        reader(path)
    message = str(error.value)
    assert message.startswith(f"{path}: cannot read image")
    assert "\n" not in message and "BytesIO" not in message


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_a_truncated_image_names_the_file(tmp_path: Path, reader) -> None:
    whole = tmp_path / "whole.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(whole)
    path = tmp_path / "cut.png"
    path.write_bytes(whole.read_bytes()[:80])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot read image \("):
        reader(path)


@pytest.mark.parametrize("reader", READERS, ids=lambda reader: reader.__name__)
def test_a_missing_image_is_file_not_found(tmp_path: Path, reader) -> None:
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path / 'nope.png'))}: image file not found$"):
        reader(tmp_path / "nope.png")


def test_grey_and_rgb_images_keep_their_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(9, 13), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")

    assert read_image(tmp_path / "grey.png", channels=1).shape == (9, 13, 1)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", channels=1)[..., 0], grey)
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png", channels=3), np.repeat(grey[..., None], 3, 2))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png", channels=3), rgb)
    # RGB -> 1 channel is PIL's luminance, bit for bit.
    luminance = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png", channels=1)[..., 0], luminance)

    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_rgb(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, 2))
    assert read_rgb(tmp_path / "rgb.png").dtype == np.uint8

    slice_ = read_grey(tmp_path / "grey.png")
    assert slice_.dtype == np.float32 and slice_.shape == (9, 13)
    np.testing.assert_allclose(slice_, grey / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(read_grey(tmp_path / "rgb.png"), luminance / 255.0, rtol=0, atol=1e-7)


def test_16_bit_png_is_scaled_as_each_reader_documents(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 30000], [40000, 65535, 12345]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")  # really stored with 16 bits

    # read_image: the full 0..65535 range onto 0..255, rounded, never clipped.
    expected = (values.astype(np.int64) * 255 + 65535 // 2) // 65535
    np.testing.assert_array_equal(read_image(path, channels=1)[..., 0], expected)
    # read_grey: divided by 65535, float32.
    np.testing.assert_allclose(read_grey(path), values / 65535.0, rtol=1e-6)
    # read_rgb: the image's own min..max onto 0..255 in three equal channels.
    rgb = read_rgb(path)
    assert rgb.shape == (2, 3, 3) and rgb.min() == 0 and rgb.max() == 255
    np.testing.assert_array_equal(rgb[..., 0], np.rint(values / 65535.0 * 255).astype(np.uint8))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


# ------------------------------------------------------------------------------------ IDX
def test_idx_round_trip_plain_and_gzip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    floats = rng.standard_normal((3, 4)).astype(np.float32)
    for name, array in (("images-idx3-ubyte", images), ("floats.idx.gz", floats)):
        write_idx(tmp_path / name, array)
        read = read_idx(tmp_path / name)
        assert read.dtype == array.dtype and read.shape == array.shape and read.flags.writeable
        np.testing.assert_array_equal(read, array)
    assert (tmp_path / "floats.idx.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_read_idx_follows_the_published_header(tmp_path: Path) -> None:
    labels = np.array([9, 0, 3, 7], dtype=np.uint8)
    # 00 00, type 0x08 (uint8), 1 dimension, then its size as a big-endian uint32.
    (tmp_path / "labels.gz").write_bytes(gzip.compress(struct.pack(">HBBI", 0, 0x08, 1, 4) + labels.tobytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz"), labels)
    shorts = np.array([[1, -2], [300, -32768]], dtype=">i2")
    (tmp_path / "shorts").write_bytes(struct.pack(">HBBII", 0, 0x0B, 2, 2, 2) + shorts.tobytes())
    assert read_idx(tmp_path / "shorts").tolist() == [[1, -2], [300, -32768]]


def test_read_idx_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "short-idx1-ubyte"
    path.write_bytes(struct.pack(">HBBI", 0, 0x08, 1, 10) + bytes(3))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: truncated IDX data: 3 bytes after the header, expected 10"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04" + bytes(8))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not an IDX file"):
        read_idx(path)
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path / 'gone'))}: IDX file not found$"):
        read_idx(tmp_path / "gone")


# ------------------------------------------------------------------------------------ listing
def test_list_images_takes_files_and_folders_recursively_sorted(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "b").mkdir(parents=True)
    for relative in ("b/2.PNG", "a.jpg", "b/1.webp", "notes.txt", ".hidden.png"):
        (folder / relative).write_bytes(b"x")
    direct = tmp_path / "scan.tiff"
    direct.write_bytes(b"x")
    assert list_images([direct, folder]) == [direct, folder / "a.jpg", folder / "b/1.webp", folder / "b/2.PNG"]
    assert ".ppm" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS and ".tif" in IMAGE_EXTENSIONS


def test_list_images_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path / 'missing'))}: no such image file or folder$"):
        list_images([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(empty))}: folder holds no image \(\.jpg .*\)$"):
        list_images([empty])


# ------------------------------------------------------------------------------------ subsets
def test_subset_is_fixed_sorted_and_independent_of_the_global_generator() -> None:
    first = subset_indices(1000, 50)
    np.random.seed(123)
    second = subset_indices(1000, 50)
    assert first is not None and second is not None
    np.testing.assert_array_equal(first, second)
    assert first.shape == (50,) and np.all(np.diff(first) > 0) and first.max() < 1000
    expected = np.sort(np.random.default_rng(SUBSET_SEED).choice(1000, size=50, replace=False))
    np.testing.assert_array_equal(first, expected)
    assert subset_indices(10, None) is None and subset_indices(10, 10) is None and subset_indices(10, 99) is None


# ------------------------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_constants() -> None:
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[0] == "T-shirt/top"
    assert FASHION_MNIST_FILES["test"] == ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
