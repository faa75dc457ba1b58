"""The classification data side: IDX, ImageFolder (every PIL mode), CIFAR pickles, transforms, mixup.

Every file is written here, in tmp_path, by code independent of the readers under test; the one
test on the real Fashion-MNIST is skipped when the Debian package is not installed.
"""

import gzip
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_classification import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    Cifar10Dataset,
    Cifar100Dataset,
    IdxDataset,
    ImageFolderDataset,
    build_eval_transform,
    build_mixup,
    build_train_transform,
    eval_resize_size,
    find_fashion_mnist,
    random_erase,
    random_translate,
    read_cifar_pickle,
    read_idx,
    write_idx,
)

# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------

_IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
              np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's IDX layout, written independently of the package: 00 00 type ndim, big-endian dims and data."""
    header = struct.pack(">BBBB", 0, 0, _IDX_CODES[array.dtype], array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def save_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_idx_dir(root: Path, n_train: int = 6, n_test: int = 4, suffix: str = ".gz") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        save_idx(
            root / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        save_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8))
    return root


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["u1", "i2", "f4"])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: str) -> None:
    array = (np.arange(2 * 3 * 5) * 7 - 40).reshape(2, 3, 5).astype(dtype)
    path = save_idx(tmp_path / f"x-idx3-ubyte{suffix}", array)
    read = read_idx(path)
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative and read.flags.writeable
    np.testing.assert_array_equal(read, array)
    # The package's writer produces the same bytes as the independent one above.
    write_idx(tmp_path / f"y{suffix}", array)
    assert read_idx(tmp_path / f"y{suffix}").tobytes() == array.tobytes()
    if not suffix:
        assert (tmp_path / "y").read_bytes() == idx_bytes(array)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x00\x08", "expected a 4-byte header"),
        (b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc", "not an IDX file: magic 0x12340801"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc", "type byte 0x07"),
        (b"\x00\x00\x08\x03" + struct.pack(">2I", 2, 28), "truncated IDX header"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(100), "truncated IDX data: 100 bytes"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes(4), "over-long IDX data"),
        (gzip.compress(idx_bytes(np.zeros((2, 4), np.uint8)))[:-6], "corrupt or truncated gzip"),
    ],
    ids=["short", "magic", "type", "header", "truncated", "overlong", "gzip"],
)
def test_idx_errors_name_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "broken-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_idx_dataset_splits_and_channels(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm", suffix="")
    train = IdxDataset(root, "train")
    test = IdxDataset(root, "test", channels=3)
    assert (len(train), len(test)) == (6, 4)
    assert train.images.shape == (6, 28, 28) and train.targets.dtype == np.int64
    assert train.classes == list(FASHION_MNIST_CLASSES)
    image, label = train[1]
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and label == 1
    np.testing.assert_array_equal(image[..., 0], train.images[1])
    image3, _ = test[2]
    assert image3.shape == (28, 28, 3)
    np.testing.assert_array_equal(image3, np.repeat(test.images[2][..., None], 3, axis=2))


def test_idx_dataset_rejects_inconsistent_files(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "a", suffix="")
    save_idx(root / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="5 labels but train-images-idx3-ubyte holds 6 images"):
        IdxDataset(root, "train")
    save_idx(root / "train-labels-idx1-ubyte", np.full(6, 10, np.uint8))
    with pytest.raises(ValueError, match=r"labels span 10..10, expected 0..9"):
        IdxDataset(root, "train")
    with pytest.raises(FileNotFoundError, match="no IDX test split"):
        IdxDataset(tmp_path, "test")


def test_find_fashion_mnist_search_order(tmp_path: Path) -> None:
    system = make_idx_dir(tmp_path / "system")
    cache = tmp_path / "cache"
    assert find_fashion_mnist(system_dirs=[system], cache_dir=cache) == system
    # A torchvision root works as given: files under <root>/FashionMNIST/raw.
    torchvision_root = tmp_path / "tv"
    make_idx_dir(torchvision_root / "FashionMNIST" / "raw", suffix="")
    assert find_fashion_mnist(torchvision_root) == torchvision_root / "FashionMNIST" / "raw"
    # Nothing anywhere: the message says how to get the data, and no download is tried.
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        find_fashion_mnist(system_dirs=[tmp_path / "nowhere"], cache_dir=cache)
    assert "download=True" in str(info.value) and "\n" not in str(info.value)
    # A user directory that lacks the files is an error, not a silent fall-back to another copy.
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
        find_fashion_mnist(tmp_path / "empty", system_dirs=[system])


def test_find_fashion_mnist_download_is_opt_in_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """download=True goes through torchvision with a socket timeout; no network is touched here."""
    import socket
    import urllib.error

    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(socket.getdefaulttimeout())
            if "offline" in root:
                raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
            make_idx_dir(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    before = socket.getdefaulttimeout()
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist") as info:
        find_fashion_mnist(download=True, system_dirs=[], cache_dir=tmp_path / "offline", timeout_s=3.0)
    assert "name resolution" in str(info.value) and "\n" not in str(info.value)
    found = find_fashion_mnist(download=True, system_dirs=[], cache_dir=tmp_path / "cache", timeout_s=3.0)
    assert found == tmp_path / "cache" / "FashionMNIST" / "raw"
    assert calls == [3.0, 3.0] and socket.getdefaulttimeout() == before
    # The cache is searched before downloading again.
    assert find_fashion_mnist(system_dirs=[], cache_dir=tmp_path / "cache") == found and len(calls) == 2


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    root = find_fashion_mnist(cache_dir=tmp_path)
    assert root == DEBIAN_FASHION_MNIST_DIR
    test = IdxDataset(root, "test")
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(test.targets).tolist() == [1000] * 10
    assert test.classes[test[0][1]] == "Ankle boot"  # the published first test image


# ---------------------------------------------------------------------------------------------
# ImageFolder: one class per PIL mode
# ---------------------------------------------------------------------------------------------

H, W = 4, 8
RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = np.linspace(0, 255, H * W).round().astype(np.uint8).reshape(H, W)
GREY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
BITS = RNG.integers(0, 2, (H, W)).astype(bool)
U16 = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
I32 = (
    np.linspace(-(2**31), 2**31 - 1, H * W)
    .round()
    .astype(np.int64)
    .clip(-(2**31), 2**31 - 1)
    .astype(np.int32)
    .reshape(H, W)
)
F32 = np.linspace(-0.25, 1.25, H * W, dtype=np.float32).reshape(H, W)
PALETTE = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
INDICES = (np.arange(H * W) % 16).astype(np.uint8).reshape(H, W)


def composite(colour: np.ndarray, alpha: np.ndarray, background: float) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.round(colour.astype(np.float64) * a + background * (1 - a)).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """PIL's own RGB -> L, as the oracle for channels=1."""
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))[..., None]


def write_mode_folder(root: Path) -> dict[str, np.ndarray]:
    """One image per mode; returns each class's expected uint8 (H, W, 1 or 3) with a black background."""
    images = {
        "1": (Image.fromarray(BITS), "png", (BITS.astype(np.uint8) * 255)[..., None]),
        "L": (Image.fromarray(GREY), "png", GREY[..., None]),
        "LA": (Image.fromarray(np.dstack([GREY, ALPHA]), "LA"), "png", composite(GREY[..., None], ALPHA, 0)),
        "RGB": (Image.fromarray(RGB), "png", RGB),
        "RGBA": (Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA"), "png", composite(RGB, ALPHA, 0)),
        "I16": (Image.fromarray(U16), "png", np.round(U16 / 257).astype(np.uint8)[..., None]),
        "I32": (
            Image.fromarray(I32),
            "tiff",
            np.round((I32.astype(np.float64) + 2**31) * 255 / (2**32 - 1)).astype(np.uint8)[..., None],
        ),
        "F": (Image.fromarray(F32), "tiff", np.round(np.clip(F32, 0, 1) * 255).astype(np.uint8)[..., None]),
    }
    palette_image = Image.fromarray(INDICES, "P")
    palette_image.putpalette(PALETTE.ravel().tolist())
    images["P"] = (palette_image, "png", PALETTE[INDICES])
    # Palette index 0 fully transparent: those pixels take the background.
    palette_rgba = PALETTE[INDICES].copy()
    palette_rgba[INDICES == 0] = 0
    images["PT"] = (palette_image.copy(), "png", palette_rgba)
    expected = {}
    for name, (image, ext, want) in images.items():
        (root / name).mkdir(parents=True)
        extra = {"transparency": 0} if name == "PT" else {}
        image.save(root / name / f"img.{ext}", **extra)
        expected[name] = want
    return expected


def test_image_folder_reads_every_mode_exactly(tmp_path: Path) -> None:
    expected = write_mode_folder(tmp_path)
    opened = {
        name: Image.open(tmp_path / name / next(iter(os.listdir(tmp_path / name)))).mode for name in expected
    }
    assert opened == {"1": "1", "L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "I16": "I;16", "I32": "I",
                      "F": "F", "P": "P", "PT": "P"}  # fmt: skip
    for channels in (1, 3):
        dataset = ImageFolderDataset(tmp_path, channels=channels)
        assert dataset.classes == sorted(expected)
        assert dataset.targets.tolist() == list(range(len(expected)))
        for image, label in dataset:
            name = dataset.classes[label]
            want = expected[name]
            if channels == 3 and want.shape[2] == 1:
                want = np.repeat(want, 3, axis=2)
            if channels == 1 and want.shape[2] == 3:
                want = luminance(want)
            assert image.dtype == np.uint8 and image.shape == (H, W, channels), name
            np.testing.assert_array_equal(image, want, err_msg=name)
    # 16-bit data is scaled, not clipped: 65535 -> 255, and mid-range values stay mid-range.
    grey16 = ImageFolderDataset(tmp_path, channels=1)[dataset.class_to_idx["I16"]][0]
    assert grey16.max() == 255 and grey16.min() == 0 and 100 < np.median(grey16) < 155


def test_image_folder_white_background(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA").save(tmp_path / "a" / "x.png")
    image, _ = ImageFolderDataset(tmp_path, channels=3, background=255)[0]
    np.testing.assert_array_equal(image, composite(RGB, ALPHA, 255))


def test_image_folder_corrupt_and_empty(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.fromarray(RGB).save(tmp_path / "cat" / "good.png")
    good = (tmp_path / "cat" / "good.png").read_bytes()
    (tmp_path / "dog" / "garbage.png").write_bytes(b"this is not a png")
    (tmp_path / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "dog" / "notes.txt").write_text("ignored: not an image extension")
    dataset = ImageFolderDataset(tmp_path)
    assert [p.name for p, _ in dataset.samples] == ["good.png", "garbage.png", "truncated.png"]
    for index in (1, 2):
        path = dataset.samples[index][0]
        with pytest.raises(ValueError, match="cannot read image") as info:
            dataset[index]
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    # The extension filter: only .txt counts now, so "cat" has no image.
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'cat'}: class folder holds no images"):
        ImageFolderDataset(tmp_path, extensions=[".txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'}: class folder holds no images"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageFolderDataset(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# CIFAR python version
# ---------------------------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's cPickle wrote its str (SHORT_BINSTRING / BINSTRING), so
    the files below have the opcodes of the real CIFAR archives, made by Python 2."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def dump_py2(path: Path, content: dict) -> None:
    with path.open("wb") as file:
        Py2Pickler(file, protocol=2).dump(content)
    # numpy 2 names its module numpy._core; the archives (numpy 1, 2009) say numpy.core.
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def make_cifar10(root: Path, dump=dump_py2) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072})
    rows = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows[name] = cifar_rows(2, i)
        dump(folder / name, {"batch_label": f"batch {i}", "labels": [i % 10, (i + 3) % 10],
                             "data": rows[name], "filenames": [f"img_{i}_0.png", f"img_{i}_1.png"]})  # fmt: skip
    return rows


def test_cifar10_real_format(tmp_path: Path) -> None:
    rows = make_cifar10(tmp_path)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    # What the format needs from the unpickler: numpy's array reconstruction and nothing else.
    globals_used = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert globals_used == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    batch = read_cifar_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    assert sorted(batch) == ["batch_label", "data", "filenames", "labels"]
    assert batch["filenames"] == ["img_0_0.png", "img_0_1.png"]

    train = Cifar10Dataset(tmp_path, "train")
    test = Cifar10Dataset(tmp_path / "cifar-10-batches-py", "test", channels=1)
    assert train.classes[3] == "cat" and len(train) == 10 and len(test) == 2
    assert train.targets.tolist() == [0, 3, 1, 4, 2, 5, 3, 6, 4, 7]
    image, label = train[2]  # data_batch_2, first row
    row = rows["data_batch_2"][0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 1
    y, x = 5, 17  # red plane first, then green, then blue, each row-major
    assert image[y, x].tolist() == [row[y * 32 + x], row[1024 + y * 32 + x], row[2048 + y * 32 + x]]
    np.testing.assert_array_equal(test[1][0], luminance(test.images[1]))


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"fine_{i}" for i in range(100)]
    coarse_names = [f"coarse_{i}" for i in range(20)]
    dump_py2(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    for split, n in (("train", 3), ("test", 2)):
        dump_py2(folder / split, {"batch_label": split, "fine_labels": [99, 5, 42][:n], "coarse_labels": [19, 1, 8][:n],
                                  "data": cifar_rows(n, n), "filenames": [f"{i}.png" for i in range(n)]})  # fmt: skip
    fine = Cifar100Dataset(tmp_path, "train")
    coarse = Cifar100Dataset(folder, "test", labels="coarse")
    assert len(fine.classes) == 100 and fine.targets.tolist() == [99, 5, 42] and fine.classes[99] == "fine_99"
    assert len(coarse.classes) == 20 and coarse.targets.tolist() == [19, 1]
    assert fine[0][0].shape == (32, 32, 3)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_resaved_by_python3(tmp_path: Path, protocol: int) -> None:
    """Files re-saved by Python 3 (bytes keys, as `pickle.load(f, encoding="bytes")` gives them)."""

    def dump(path: Path, content: dict) -> None:
        def to_bytes(value):
            if isinstance(value, str):
                return value.encode()
            if isinstance(value, list):
                return [to_bytes(v) for v in value]
            return value

        path.write_bytes(
            pickle.dumps({k.encode(): to_bytes(v) for k, v in content.items()}, protocol=protocol)
        )

    rows = make_cifar10(tmp_path, dump)
    dataset = Cifar10Dataset(tmp_path, "test")
    assert dataset.classes[0] == "airplane"
    np.testing.assert_array_equal(dataset.images[0].transpose(2, 0, 1).reshape(-1), rows["test_batch"][0])


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"], "x": Evil(marker)}, protocol=2))
    with pytest.raises(ValueError, match=r"refused global (os|posix)\.system") as info:
        Cifar10Dataset(tmp_path)
    assert str(folder / "batches.meta") in str(info.value)
    # An object array would smuggle arbitrary objects through numpy: refused before any call too.
    (folder / "evil_array").write_bytes(pickle.dumps(np.array([Evil(marker)], dtype=object), protocol=5))
    with pytest.raises(ValueError, match="refused global"):
        read_cifar_pickle(folder / "evil_array")
    (folder / "evil_eval").write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(ValueError, match=r"refused global builtins\.eval"):
        read_cifar_pickle(folder / "evil_eval")
    assert not marker.exists()


def test_cifar_wrong_field_is_named(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    dump_py2(path, {"labels": [0, 1], "data": np.zeros((2, 3072), np.float32)})
    with pytest.raises(
        ValueError,
        match=r"test_batch: field 'data' must be an \(N, 3072\) uint8 array, got \(2, 3072\) float32",
    ):
        Cifar10Dataset(tmp_path, "test")


# ---------------------------------------------------------------------------------------------
# Transforms and mixup
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_transforms_shapes_and_determinism(channels: int) -> None:
    mean, std = (0.5,) * channels, (0.25,) * channels
    image = np.random.default_rng(0).integers(0, 256, (28, 36, channels), dtype=np.uint8)
    train = build_train_transform(32, channels, mean, std, hflip=0.5, seed=0)
    out = train(image)
    assert out.shape == (channels, 32, 32) and out.dtype == torch.float32
    assert build_train_transform((24, 40), channels, mean, std)(image).shape == (channels, 24, 40)
    evaluate = build_eval_transform(32, channels, mean, std, crop_pct=0.875)
    first, second = evaluate(image), evaluate(image)
    assert first.shape == (channels, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, second)
    # crop_pct 1 at the image's own size is the identity up to normalisation.
    square = image[:28, :28]
    identity = build_eval_transform(28, channels, mean, std, crop_pct=1.0)(square)
    torch.testing.assert_close(
        identity, (torch.from_numpy(square).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    )
    # Colour ops only for RGB pipelines.
    has_colour = "SomeOf" in repr(train.pipeline)
    assert has_colour == (channels == 3)



@pytest.mark.parametrize("channels", [1, 3])
def test_train_transform_without_random_choices_is_flagged_and_seed_free(channels: int) -> None:
    """Datasets skip the per-sample reseed only where no seed can change the output."""
    mean, std = (0.5,) * channels, (0.25,) * channels
    fixed = build_train_transform(32, channels, mean, std, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0,
                                  color_ops=0)
    assert not fixed.is_random
    rng = np.random.default_rng(1)
    for shape in ((28, 28), (28, 36), (40, 30)):  # square, and the crop's central-square fallback
        image = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
        outputs = []
        for seed in (0, 1, 12345):
            fixed.set_seed(seed)
            outputs.append(fixed(image))
        assert all(torch.equal(outputs[0], other) for other in outputs[1:])
    for random_option in ({"scale": (0.9, 1.0)}, {"ratio": (0.9, 1.1)}, {"hflip": 0.5}):
        options = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip": 0.0, "color_ops": 0, **random_option}
        assert build_train_transform(32, channels, mean, std, **options).is_random
    colour = build_train_transform(32, channels, mean, std, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0,
                                   color_ops=2)
    assert colour.is_random == (channels == 3)  # grey pipelines get no colour ops
    assert not build_eval_transform(32, channels, mean, std).is_random

class _CountingSource:
    """An `IdxDataset` stand-in that counts the reads of each item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.targets, self.classes = images, labels, [str(c) for c in range(10)]
        self.reads = np.zeros(len(images), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        self.reads[index] += 1
        return self.images[index], int(self.targets[index])


def test_cached_samples_equal_the_pipeline_and_read_each_item_once() -> None:
    from vit_classification.data import AugmentedSamples

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 12)
    fixed = build_train_transform(32, 1, (0.3,), (0.35,), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_ops=0)
    subset = np.array([3, 0, 7, 11, 5])
    plain = AugmentedSamples(_CountingSource(images, labels), fixed, subset, seed=0)
    counting = _CountingSource(images, labels)
    cached = AugmentedSamples(counting, fixed, subset, seed=0, cache=True)
    for epoch in range(3):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for index in range(len(subset)):
            expected, got = plain[index], cached[index]
            assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:] == (int(labels[subset[index]]), index)
    assert counting.reads[subset].tolist() == [1] * len(subset)  # later epochs never touch the source
    assert counting.reads.sum() == len(subset)
    # An evaluation set (no seed) caches too.
    eval_counting = _CountingSource(images, labels)
    evaluation = AugmentedSamples(eval_counting, build_eval_transform(32, 1, (0.3,), (0.35,)), seed=None, cache=True)
    first = [evaluation[i][0] for i in range(len(images))]
    assert all(torch.equal(first[i], evaluation[i][0]) for i in range(len(images)))
    assert eval_counting.reads.tolist() == [1] * len(images)


def test_cache_with_a_random_training_pipeline_is_refused() -> None:
    from vit_classification.data import AugmentedSamples

    images, labels = np.zeros((2, 28, 28, 1), dtype=np.uint8), np.zeros(2, dtype=np.int64)
    flips = build_train_transform(32, 1, (0.3,), (0.35,), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, color_ops=0)
    with pytest.raises(ValueError, match="data.cache_samples .* draws random ops"):
        AugmentedSamples(_CountingSource(images, labels), flips, seed=0, cache=True)
    AugmentedSamples(_CountingSource(images, labels), flips, seed=0, cache=False)  # without the cache: fine


def test_transform_argument_errors() -> None:
    assert eval_resize_size(224, 0.875) == (256, 256) and eval_resize_size((224, 160), 0.9) == (248, 177)
    with pytest.raises(ValueError, match=r"mean has 3 values .* but channels=1"):
        build_eval_transform(28, 1, (0.5, 0.5, 0.5), (0.2,))
    transform = build_eval_transform(28, 3, (0.5,) * 3, (0.2,) * 3)
    with pytest.raises(ValueError, match=r"expects a uint8 \(H, W, 3\) image, got \(28, 28, 1\)"):
        transform(np.zeros((28, 28, 1), np.uint8))


def test_dataset_with_transform_batches(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm", n_train=4)
    transform = build_train_transform(32, 3, (0.5,) * 3, (0.25,) * 3, scale=(0.35, 1.0), seed=0)
    loader = torch.utils.data.DataLoader(
        IdxDataset(root, "train", channels=3, transform=transform), batch_size=4
    )
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3]


def test_random_translate_shifts_each_image_by_its_own_offset_within_the_bound() -> None:
    torch.manual_seed(0)
    images = torch.rand(64, 2, 7, 9)
    shift = 2
    shifted = random_translate(images, shift)
    assert shifted.shape == images.shape and not torch.equal(shifted, images)
    # Reference: every window of the replicate-padded image; each output must equal exactly one.
    padded = torch.nn.functional.pad(images, (shift,) * 4, mode="replicate")
    offsets = set()
    for index in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(-shift, shift + 1)
            for dx in range(-shift, shift + 1)
            if torch.equal(shifted[index], padded[index, :, shift + dy:shift + dy + 7, shift + dx:shift + dx + 9])
        ]
        assert len(matches) == 1, (index, matches)
        offsets.add(matches[0])
    assert len(offsets) > 10, "offsets are drawn per image"
    assert random_translate(images, 0) is images
    with pytest.raises(ValueError, match="max_shift must be >= 0, got -1"):
        random_translate(images, -1)


def test_random_erase_fills_one_rectangle_per_image_with_noise() -> None:
    images = torch.zeros(32, 1, 32, 32)
    erased = random_erase(images.clone(), 1.0)
    for image in erased[:, 0]:
        rows, cols = torch.nonzero(image != 0, as_tuple=True)
        assert len(rows) > 0, "probability 1: every image is erased"
        height = int(rows.max() - rows.min()) + 1
        width = int(cols.max() - cols.min()) + 1
        # one filled rectangle of 2-33% of the area (noise is never exactly 0)
        assert len(rows) == height * width and 0.02 * 1024 * 0.8 <= height * width <= 1024 / 3 * 1.2
    assert torch.equal(random_erase(images.clone(), 0.0), images)
    with pytest.raises(ValueError, match=r"probability must lie in \[0, 1\], got 2"):
        random_erase(images, 2)


def test_mixup_helper() -> None:
    assert build_mixup(10, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1) is None
    mixup = build_mixup(10, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 3, 3, 9])
    mixed, soft = mixup(images, labels)
    assert mixed.shape == (4, 3, 8, 8) and soft.shape == (4, 10) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(4))
    assert soft.min() >= 0.1 / 10 - 1e-6
