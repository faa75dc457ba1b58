"""Classification datasets in the formats users bring: IDX (MNIST / Fashion-MNIST), ImageFolder, CIFAR.

Every dataset here returns ``(image, label)`` where ``image`` is a uint8 numpy array of shape
(H, W, channels) with ``channels`` 1 or 3 as asked, and ``label`` a Python int; given a
``transform`` (any callable taking that array, e.g. `vit_classification.transforms.ImageTransform`)
it returns ``(transform(image), label)`` instead. Every dataset exposes ``classes`` (names, index =
label) and ``targets`` (int64 numpy array of shape (N,)).

Grey data feeds a 3-channel model by replicating the grey plane; colour data feeds a 1-channel
model through luminance with PIL's ITU-R 601-2 weights (the same integers as ``Image.convert("L")``).

Errors about a file are one-line ``ValueError``/``FileNotFoundError`` messages that name the file
and what was expected.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "InMemoryImageDataset",
    "CIFAR10_CLASSES",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "MNIST_CLASSES",
    "Cifar10Dataset",
    "Cifar100Dataset",
    "IdxDataset",
    "ImageFolderDataset",
    "default_cache_dir",
    "find_fashion_mnist",
    "find_mnist",
    "load_image",
    "read_cifar_pickle",
    "read_idx",
    "to_channels",
    "write_idx",
]

Channels = Literal[1, 3]
Split = Literal["train", "test"]
Transform = Callable[[np.ndarray], Any]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# torchvision's names, so predictions files read the same whichever loader made them.
MNIST_CLASSES: tuple[str, ...] = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)  # fmt: skip
# Only used when batches.meta is missing; the real archive always has it.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# The one place the Debian package `dataset-fashion-mnist` is named: where it installs its four .gz files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# torchvision's IMG_EXTENSIONS; compared case-insensitively.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with newlines folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_channels(image: np.ndarray, channels: Channels) -> np.ndarray:
    """Give an image exactly `channels` channels.

    Args:
        image: uint8, (H, W) or (H, W, 1) grey, or (H, W, 3) RGB.
        channels: 1 or 3. Grey -> 3 replicates the plane; RGB -> 1 takes the luminance
            ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``, PIL's fixed-point ITU-R 601-2 weights,
            so the result equals ``Image.convert("L")`` bit for bit.

    Returns:
        uint8 (H, W, channels), C-contiguous.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[2] == channels:
        return np.ascontiguousarray(image)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    rgb = image.astype(np.uint32)
    grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return grey.astype(np.uint8)[:, :, None]


# --------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------------

# The IDX type byte -> big-endian numpy dtype (LeCun's format description).
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name says)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({_one_line(exc)})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format), plain or gzip-compressed.

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a dimension count, then one big-endian uint32 per dimension;
    the data follows big-endian, row-major, and must fill the shape exactly.

    Returns:
        An array of the stored shape in the native byte order: for MNIST / Fashion-MNIST images
        (N, 28, 28) uint8, for labels (N,) uint8.

    Raises:
        ValueError: one line naming the file: wrong magic, unknown type byte, truncated or
            over-long data, corrupt gzip stream.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(data)} bytes, expected a 4-byte header 00 00 TT ND")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError(
            f"{path}: not an IDX file: magic 0x{data[:4].hex()}, expected 0x0000TTND (two zero bytes, type, dims)"
        )
    if type_code not in _IDX_TYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_TYPES)
        raise ValueError(f"{path}: IDX type byte 0x{type_code:02X} is not one of {known}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header says 0 dimensions, expected at least 1")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{path}: truncated IDX header: {len(data)} bytes, expected {header_size} for {ndim} dims"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        kind = "truncated" if found < expected else "over-long"
        raise ValueError(
            f"{path}: {kind} IDX data: {found} bytes after the header, expected {expected} for shape {shape} {dtype}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    # A writable copy in native byte order: torch.from_numpy warns on read-only buffers.
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as an IDX file; gzip-compressed when `path` ends in ``.gz``.

    Args:
        array: uint8, int8, int16, int32, float32 or float64, any number (>= 1) of dimensions.
    """
    path = Path(path)
    array = np.asarray(array)
    type_code = next(
        (code for code, dtype in _IDX_TYPES.items() if dtype.newbyteorder("=") == array.dtype), None
    )
    if type_code is None or array.ndim == 0:
        raise ValueError(f"{path}: cannot write a {array.dtype} array of {array.ndim} dims as IDX")
    header = struct.pack(f">HBB{array.ndim}I", 0, type_code, array.ndim, *array.shape)
    payload = header + array.astype(_IDX_TYPES[type_code], copy=False).tobytes(order="C")
    if path.suffix == ".gz":
        # mtime=0 so the same array always gives the same bytes.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def _idx_candidates(root: Path, kind: str, split: Split) -> list[Path]:
    """Where one IDX file of a split may sit under `root`, in the order they are tried."""
    prefix = "train" if split == "train" else "t10k"
    ndim = 3 if kind == "images" else 1
    # "-idx3-ubyte" is the published name, ".idx3-ubyte" what some unzip tools leave behind.
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [root / (name + suffix) for name in names for suffix in ("", ".gz")]


def _idx_split_files(root: Path, split: Split) -> tuple[Path, Path] | None:
    """(images, labels) of `split` under `root`, or None when either is missing."""
    found = []
    for kind in ("images", "labels"):
        path = next((p for p in _idx_candidates(root, kind, split) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _has_idx_splits(root: Path) -> bool:
    return all(_idx_split_files(root, split) is not None for split in ("train", "test"))


class InMemoryImageDataset(Dataset):
    """A labelled image set held in memory as one uint8 array (IDX and CIFAR files).

    Subclasses set `images` (N, H, W) or (N, H, W, 3) uint8, `targets` (N,) int64 and
    `classes`; items are (transform(image) or the (H, W, channels) uint8 image, label).
    """

    images: np.ndarray
    targets: np.ndarray
    classes: list[str]

    def __init__(self, channels: Channels, transform: Transform | None) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.channels = channels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = to_channels(self.images[index], self.channels)
        label = int(self.targets[index])
        return (self.transform(image) if self.transform is not None else image), label


class IdxDataset(InMemoryImageDataset):
    """One split of an MNIST-style IDX data set: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    Attributes:
        images: (N, H, W) uint8 (28 x 28 for MNIST and Fashion-MNIST).
        targets: (N,) int64.
        classes: names, index = label.
        images_file, labels_file: the files read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: Split = "train",
        classes: Sequence[str] = FASHION_MNIST_CLASSES,
        channels: Channels = 1,
        transform: Transform | None = None,
    ) -> None:
        """
        Args:
            root: a directory holding the four IDX files (plain or ``.gz``), e.g. the result of
                `find_fashion_mnist`.
            split: "train" (``train-*``) or "test" (``t10k-*``).
            classes: class names; every label must index into them.
            channels: 1 or 3 channels per returned image (grey replicated for 3).
            transform: applied to the (H, W, channels) uint8 image.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        super().__init__(channels, transform)
        root = Path(root)
        files = _idx_split_files(root, split)
        if files is None:
            wanted = " and ".join(
                p.name + "[.gz]" for p in (_idx_candidates(root, k, split)[0] for k in ("images", "labels"))
            )
            raise FileNotFoundError(f"{root}: no IDX {split} split here, expected {wanted}")
        self.images_file, self.labels_file = files
        images = read_idx(self.images_file)
        labels = read_idx(self.labels_file)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{self.images_file}: expected (N, H, W) uint8 images, got {images.shape} {images.dtype}"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(
                f"{self.labels_file}: expected (N,) integer labels, got {labels.shape} {labels.dtype}"
            )
        if len(labels) != len(images):
            raise ValueError(
                f"{self.labels_file}: {len(labels)} labels but {self.images_file.name} holds {len(images)} images"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"{self.labels_file}: labels span {labels.min()}..{labels.max()}, expected 0..{len(classes) - 1}"
            )
        self.images = images
        self.targets = labels.astype(np.int64)
        self.classes = list(classes)


def default_cache_dir() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/vitasks`` (``~/.cache/vitasks`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vitasks"


def _find_idx_dir(
    name: str,
    torchvision_name: str,
    root: str | os.PathLike | None,
    system_dirs: Sequence[Path],
    how_to_install: str,
    download: bool,
    cache_dir: str | os.PathLike | None,
    timeout_s: float,
) -> Path:
    """The shared search of `find_fashion_mnist` and `find_mnist` (see there)."""
    # torchvision keeps its files under <root>/<ClassName>/raw, so a torchvision root works as is.
    if root is not None:
        search = [Path(root), Path(root) / torchvision_name / "raw"]
        download_root = Path(root)
    else:
        download_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        search = [Path(d) for d in system_dirs] + [download_root / torchvision_name / "raw"]
    for candidate in search:
        if _has_idx_splits(candidate):
            return candidate
    looked = ", ".join(str(p) for p in search)
    if not download:
        raise FileNotFoundError(
            f"{name} not found (looked in {looked}); {how_to_install}give a directory holding "
            f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
            f"(.gz or not), or pass download=True to fetch it with torchvision into {download_root}"
        )
    import torchvision.datasets  # only here: the rest of this module must not need torchvision

    dataset_class = getattr(torchvision.datasets, torchvision_name)
    # torchvision's urlopen has no timeout: a black-holed network would hang forever without this.
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        dataset_class(str(download_root), train=False, download=True)
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(
            f"downloading {name} into {download_root} failed ({_one_line(exc)}); {how_to_install}"
            f"or give a directory holding the four IDX files"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous_timeout)
    found = download_root / torchvision_name / "raw"
    if not _has_idx_splits(found):
        raise RuntimeError(f"torchvision reported a download of {name} but {found} lacks the four IDX files")
    return found


def find_fashion_mnist(
    root: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    system_dirs: Sequence[str | os.PathLike] = (DEBIAN_FASHION_MNIST_DIR,),
    timeout_s: float = 20.0,
) -> Path:
    """Find the directory holding Fashion-MNIST's four IDX files.

    Order: a directory given by the user (`root`, or ``root/FashionMNIST/raw`` as torchvision
    lays it out) and nothing else, so a typo fails instead of silently training on other files;
    with no `root`, the Debian package's location (``apt-get install dataset-fashion-mnist``
    puts the four ``.gz`` files in `DEBIAN_FASHION_MNIST_DIR`), then an earlier download in the
    cache. When that finds nothing, ``download=True`` fetches the files with torchvision into
    `root` (or the cache, `default_cache_dir`), each socket operation limited to `timeout_s`
    seconds so an offline machine fails fast; without it a FileNotFoundError says how to get
    the data.

    Args:
        root: a user-given directory, or None to search.
        download: allow torchvision's download when nothing is found (opt-in: never by surprise).
        cache_dir: where downloads go and are looked for; `default_cache_dir()` when None.
        system_dirs: the system locations searched when `root` is None (tests pass their own).
        timeout_s: socket timeout for the download.

    Returns:
        The directory, usable as ``IdxDataset(directory, split)``.
    """
    return _find_idx_dir(
        "Fashion-MNIST",
        "FashionMNIST",
        root,
        [Path(d) for d in system_dirs],
        "install it with `apt-get install dataset-fashion-mnist`, ",
        download,
        cache_dir,
        timeout_s,
    )


def find_mnist(
    root: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    timeout_s: float = 20.0,
) -> Path:
    """Find MNIST's four IDX files: as `find_fashion_mnist`, but no distribution packages MNIST,
    so without `root` only the download cache (``<cache>/MNIST/raw``) is searched."""
    return _find_idx_dir("MNIST", "MNIST", root, [], "", download, cache_dir, timeout_s)


# --------------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------------


def _tile_rawmode(image: Image.Image) -> str | None:
    """The raw mode the decoder will read (e.g. "I;16B", "I;32S"), known only before `load()`."""
    try:
        args = image.tile[0][3]
    except (IndexError, TypeError, AttributeError):
        return None
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _integer_range(mode: str, rawmode: str | None) -> tuple[int, int, bool]:
    """(lowest, highest, view_as_uint32) of the integers a mode "I"/"I;16*" image stores in its file.

    Pillow holds every mode "I" image as int32, whatever the file held; the decoder's raw mode
    tells the real bit depth: 16-bit PNGs opened by older Pillow as "I" have rawmode "I;16B",
    unsigned 32-bit TIFFs "I;32N" (stored wrapped into int32).
    """
    source = rawmode if rawmode and rawmode.startswith("I;") else mode
    if source.startswith("I;16"):
        signed = source.endswith("S")
        return (-(2**15), 2**15 - 1, False) if signed else (0, 2**16 - 1, False)
    if source.startswith("I;32") and not source.endswith("S"):
        return 0, 2**32 - 1, True
    return -(2**31), 2**31 - 1, False


def _composite(colour: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Round(colour * a + background * (1 - a)) with a = alpha / 255, exactly, in integers.

    (x + 127) // 255 equals round(x / 255) for integers x >= 0: x / 255 is never exactly k + 0.5.
    """
    a = alpha.astype(np.int32)[..., None]
    mixed = colour.astype(np.int32) * a + background.astype(np.int32) * (255 - a)
    return ((mixed + 127) // 255).astype(np.uint8)


def _pil_to_uint8(
    image: Image.Image,
    rawmode: str | None,
    background: tuple[int, int, int],
    float_range: tuple[float, float],
) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W, 1) grey or (H, W, 3) RGB, keeping grey images grey."""
    mode = image.mode
    # Palette and premultiplied modes go through their straight-alpha or plain equivalents first.
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "RGBa", "RGBX"):
        image = image.convert("RGBA" if mode != "RGBX" else "RGB")
    elif mode == "La":
        image = image.convert("LA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    mode = image.mode

    if mode == "1":
        return (np.asarray(image, dtype=np.uint8) * 255)[:, :, None]
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)[:, :, None]
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if mode == "LA":
        pixels = np.asarray(image, dtype=np.uint8)
        grey_background = to_channels(np.array(background, dtype=np.uint8).reshape(1, 1, 3), 1)[0, 0]
        return _composite(pixels[..., :1], pixels[..., 1], grey_background)
    if mode == "RGBA":
        pixels = np.asarray(image, dtype=np.uint8)
        return _composite(pixels[..., :3], pixels[..., 3], np.array(background, dtype=np.uint8))
    if mode == "I" or mode.startswith("I;16"):
        lowest, highest, unsigned32 = _integer_range(mode, rawmode)
        values = np.asarray(image)
        if unsigned32:
            values = values.astype(np.int32, copy=False).view(np.uint32)
        # Linear map of the stored type's whole range onto 0..255 (never clipping at 255, which is
        # what Image.convert("L") does to 16-bit data). (2**bits - 1) is odd, so no ties to round.
        span = highest - lowest
        scaled = ((values.astype(np.int64) - lowest) * 255 + span // 2) // span
        return scaled.astype(np.uint8)[:, :, None]
    if mode == "F":
        low, high = float_range
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=low)
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
        return np.rint(scaled).astype(np.uint8)[:, :, None]
    raise ValueError(f"image mode {mode!r} is not supported")


# What PIL raises for a missing, corrupt, truncated or non-image file, depending on the format.
_PIL_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def load_image(
    path: str | os.PathLike,
    channels: Channels = 3,
    background: int | tuple[int, int, int] = 0,
    float_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Read one image file of any PIL mode as uint8 (H, W, channels).

    Modes: "1" -> 0/255; "L"; "RGB"; "LA"/"RGBA" composited over `background`; "P" via RGB, or
    RGBA when the palette has transparency; CMYK/YCbCr/LAB/HSV via RGB; 16- and 32-bit integer
    ("I;16*", "I") scaled linearly from the full range of the integer type the file stores (its
    actual bit depth: 0..65535 for 16-bit unsigned, -2**31..2**31-1 for signed 32-bit) to 0..255,
    never clipped; float "F" mapped from `float_range` to 0..255 (outside clipped, NaN -> low end).
    The first frame of a multi-frame file is used; EXIF orientation is not applied (as timm and
    torchvision).

    Args:
        channels: 1 or 3; grey -> 3 replicates, RGB -> 1 takes luminance (see `to_channels`).
        background: grey level or RGB colour under transparent pixels. Default black (0): what a
            transparent pixel contributes with premultiplied alpha, and the background of
            MNIST-style data; pass 255 for white (logos, product shots).
        float_range: the values of a float image that mean black and white.

    Raises:
        ValueError: one line naming the file when it is corrupt, truncated or not an image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(background, int):
        background = (background, background, background)
    if len(background) != 3 or not all(0 <= int(v) <= 255 for v in background):
        raise ValueError(f"background must be a grey level or an RGB triple in 0..255, got {background!r}")
    if not float_range[1] > float_range[0]:
        raise ValueError(f"float_range must rise, got {float_range!r}")
    try:
        image = Image.open(path)
    except _PIL_ERRORS as exc:
        raise ValueError(f"{path}: cannot read image ({_one_line(exc)})") from exc
    with image:
        try:
            rawmode = _tile_rawmode(image)
            image.load()
        except _PIL_ERRORS as exc:
            raise ValueError(f"{path}: cannot read image ({_one_line(exc)})") from exc
        try:
            pixels = _pil_to_uint8(
                image, rawmode, (int(background[0]), int(background[1]), int(background[2])), float_range
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return to_channels(pixels, channels)


class ImageFolderDataset(Dataset):
    """torchvision's ImageFolder layout: ``root/<class name>/**/<image>``, classes sorted by name.

    Images are decoded lazily, per item, by `load_image` (any PIL mode, see there).

    Attributes:
        classes: sorted class-folder names, index = label.
        class_to_idx: name -> label.
        samples: (path, label) for every image, sorted by class then path.
        targets: (N,) int64.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        channels: Channels = 3,
        transform: Transform | None = None,
        extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
        background: int | tuple[int, int, int] = 0,
        float_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        """
        Args:
            root: the folder whose sub-folders are the classes.
            channels: 1 or 3 channels per returned image.
            transform: applied to the (H, W, channels) uint8 image.
            extensions: file suffixes that count as images (case-insensitive), others are ignored;
                None takes every file whose name does not start with ".".
            background: under transparent pixels (default black), see `load_image`.
            float_range: float-image values meaning black and white, see `load_image`.

        Raises:
            FileNotFoundError: `root` is missing, holds no class folders, or a class folder
                holds no image (a class the model could never learn is a mistake in the data).
        """
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: image folder does not exist")
        suffixes = (
            None
            if extensions is None
            else tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        )
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise FileNotFoundError(f"{root}: no class folders, expected root/<class name>/<images>")
        self.root = root
        self.classes = [p.name for p in class_dirs]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(
                p
                for p in class_dir.rglob("*")
                if p.is_file()
                and not p.name.startswith(".")
                and (suffixes is None or p.suffix.lower() in suffixes)
            )
            if not files:
                wanted = "any file" if suffixes is None else "files ending in " + " ".join(suffixes)
                raise FileNotFoundError(f"{class_dir}: class folder holds no images, expected {wanted}")
            self.samples.extend((path, label) for path in files)
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)
        self.channels = channels
        self.transform = transform
        self.background = background
        self.float_range = float_range

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path, self.channels, self.background, self.float_range)
        return (self.transform(image) if self.transform is not None else image), label


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100, python version
# --------------------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Callable:
    # The function numpy's own ndarray pickles call, taken from numpy itself so that both the
    # Python-2 era name (numpy.core.multiarray) and numpy 2's (numpy._core.multiarray) resolve
    # to it without importing the deprecated numpy.core alias.
    return np.empty(0).__reduce__()[0]


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """numpy's protocol-5 array pickle (numpy._core.numeric._frombuffer), refusing object dtypes."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise pickle.UnpicklingError("an object-dtype array")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 writes for a bytes object at pickle protocol 2 (_codecs.encode), latin-1 only."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals an ndarray pickle needs.

    pickle can call any importable callable named in the stream (``os.system``,
    ``builtins.eval``, ``subprocess.Popen``...), so a downloaded "CIFAR batch" could run code on
    load. The real files are dicts of str keys -> lists of int / str and one uint8 ndarray; the
    containers and scalars are pickle opcodes that need no global at all, and the array needs
    only numpy's reconstruct function, ndarray and dtype. Python 3 re-saves of the same dicts add
    ``_codecs.encode`` (bytes at protocol 2, latin-1 only here) and ``_frombuffer`` (protocol 5).
    Everything else is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _frombuffer
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _decode_keys(value: Any) -> Any:
    """bytes -> str (latin-1) in dict keys and lists, so files saved with bytes keys read the same."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, dict):
        return {_decode_keys(k): _decode_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_keys(v) for v in value]
    return value


def read_cifar_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Load one file of the CIFAR python version (a pickled dict) without letting it run code.

    The real files were written by Python 2's cPickle: py2 ``str`` keys and names, and the
    images as a numpy array whose raw bytes are a py2 ``str``. They are read with
    ``encoding="latin1"`` (numpy's advice for py2 array pickles), through `_CifarUnpickler`,
    which refuses every global but numpy's array reconstruction: a malicious pickle gets a
    ValueError, never a call. Keys and strings come back as str whatever the writer used.

    Returns:
        e.g. for ``data_batch_1``: {"batch_label": str, "labels": list[int], "data": (10000, 3072)
        uint8, "filenames": list[str]}.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            content = _CifarUnpickler(file, encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as exc:
        raise ValueError(f"{path}: not a CIFAR python pickle ({_one_line(exc)})") from exc
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return _decode_keys(content)


def _field(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise ValueError(f"{path}: no field {key!r}, found {sorted(content)}")
    return content[key]


def _cifar_split(
    directory: Path, files: Sequence[str], label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the given batch files: images (N, 32, 32, 3) uint8, labels (N,) int64."""
    images, labels = [], []
    for name in files:
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: CIFAR batch file is missing")
        content = read_cifar_pickle(path)
        data = _field(content, "data", path)
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
        ):
            got = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"{path}: field 'data' must be an (N, 3072) uint8 array, got {got}")
        batch_labels = np.asarray(_field(content, label_key, path))
        if batch_labels.shape != (len(data),) or batch_labels.dtype.kind not in "iu":
            raise ValueError(
                f"{path}: field {label_key!r} must hold {len(data)} integers, got {batch_labels.shape} {batch_labels.dtype}"
            )
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= num_classes):
            raise ValueError(
                f"{path}: field {label_key!r} spans {batch_labels.min()}..{batch_labels.max()}, expected 0..{num_classes - 1}"
            )
        # Each row is the red plane, then green, then blue, each 32x32 row-major.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _cifar_dir(root: str | os.PathLike, folder: str, marker: str) -> Path:
    """`root` itself when it holds the batches, else ``root/<folder>`` (torchvision's root)."""
    root = Path(root)
    for candidate in (root, root / folder):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"{root}: no CIFAR files here or in {root / folder}, expected {marker}")


class Cifar10Dataset(InMemoryImageDataset):
    """CIFAR-10, python version: ``data_batch_1..5``, ``test_batch``, ``batches.meta``.

    Attributes:
        images: (N, 32, 32, 3) uint8 RGB.
        targets: (N,) int64.
        classes: from ``batches.meta["label_names"]``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: Split = "train",
        channels: Channels = 3,
        transform: Transform | None = None,
    ) -> None:
        """
        Args:
            root: ``cifar-10-batches-py`` itself or the folder holding it.
            split: "train" (the five data batches) or "test" (``test_batch``).
            channels: 3, or 1 for luminance.
            transform: applied to the (32, 32, channels) uint8 image.
        """
        super().__init__(channels, transform)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.root = _cifar_dir(root, "cifar-10-batches-py", "batches.meta")
        meta_path = self.root / "batches.meta"
        self.classes = [str(n) for n in _field(read_cifar_pickle(meta_path), "label_names", meta_path)]
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        self.images, self.targets = _cifar_split(self.root, files, "labels", len(self.classes))


class Cifar100Dataset(InMemoryImageDataset):
    """CIFAR-100, python version: ``train``, ``test``, ``meta`` with fine (100) and coarse (20) labels.

    Attributes:
        images: (N, 32, 32, 3) uint8 RGB.
        targets: (N,) int64, fine or coarse as asked.
        classes: ``meta["fine_label_names"]`` or ``meta["coarse_label_names"]``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: Split = "train",
        labels: Literal["fine", "coarse"] = "fine",
        channels: Channels = 3,
        transform: Transform | None = None,
    ) -> None:
        """
        Args:
            root: ``cifar-100-python`` itself or the folder holding it.
            split: "train" or "test".
            labels: "fine" (100 classes) or "coarse" (20 superclasses).
            channels: 3, or 1 for luminance.
            transform: applied to the (32, 32, channels) uint8 image.
        """
        super().__init__(channels, transform)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if labels not in ("fine", "coarse"):
            raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
        self.root = _cifar_dir(root, "cifar-100-python", "meta")
        meta_path = self.root / "meta"
        names_key = "fine_label_names" if labels == "fine" else "coarse_label_names"
        self.classes = [str(n) for n in _field(read_cifar_pickle(meta_path), names_key, meta_path)]
        label_key = "fine_labels" if labels == "fine" else "coarse_labels"
        self.images, self.targets = _cifar_split(self.root, [split], label_key, len(self.classes))
