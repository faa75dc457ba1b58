"""Data helpers every task shares: image files, IDX files, image listing, fixed subsets, Fashion-MNIST.

- Image files: `read_image` (uint8 (H, W, 1 or 3), any PIL mode, the classification reader),
  `read_rgb` (uint8 (H, W, 3), the detection reader) and `read_grey` (float32 (H, W) in [0, 1],
  the segmentation reader). Each reads the file in one call and decodes from memory; a missing
  file raises FileNotFoundError and an unreadable one a one-line ValueError, both naming the path.
- IDX files (LeCun's MNIST format, plain or gzip): `read_idx`, `write_idx`.
- `IMAGE_EXTENSIONS` (what counts as an image file) and `list_images` (files and folders).
- `subset_indices`: the fixed random subset of `data.num_train_samples` / `num_eval_samples`,
  drawn with `SUBSET_SEED` so runs with different training seeds see the same images.
- Fashion-MNIST: `FASHION_MNIST_CLASSES`, `FASHION_MNIST_FILES` and `DEBIAN_FASHION_MNIST_DIR`.
- Up-front validation (each task checks its sets when it builds them, before the first step):
  `image_header_size` (a header read, no pixel decode), `find_bad_files` (checks in a thread
  pool), `handle_bad_samples` (raise one line, or under ``data.on_bad_sample=skip`` leave bad
  training samples out and list them in ``skipped_samples.txt`` of the run folder).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "IMAGE_EXTENSIONS",
    "SKIPPED_SAMPLES_FILE",
    "SUBSET_SEED",
    "BadSamplePolicy",
    "bad_samples_error",
    "find_bad_files",
    "handle_bad_samples",
    "image_header_size",
    "list_images",
    "one_line",
    "read_grey",
    "read_idx",
    "read_image",
    "read_image_crop",
    "read_rgb",
    "subset_indices",
    "to_channels",
    "write_idx",
]

Channels = Literal[1, 3]

# ------------------------------------------------------------------------------------ constants
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# The one place the Debian package `dataset-fashion-mnist` is named: where it installs its four .gz files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# (images, labels) file of each split as published (and as MNIST names them); the Debian package
# and the original download add ".gz".
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# torchvision's IMG_EXTENSIONS (a superset of what each task reads); compared case-insensitively.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Seed of the fixed subsets `data.num_train_samples` / `num_eval_samples` pick: independent of
# train.seed, so runs with different seeds train and evaluate on the same images.
SUBSET_SEED = 20240601


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with newlines folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------ subsets
def subset_indices(total: int, limit: int | None) -> np.ndarray | None:
    """`limit` of `total` item indices, a fixed random choice (`SUBSET_SEED`), ascending.

    Returns:
        int64 (limit,) sorted indices, or None when `limit` is None or covers every item.
    """
    if limit is None or limit >= total:
        return None
    chosen = np.random.default_rng(SUBSET_SEED).choice(total, size=limit, replace=False)
    return np.sort(chosen)


# ------------------------------------------------------------------------------------ listing
def list_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files given directly, or found in folders (recursively, sorted, by `IMAGE_EXTENSIONS`).

    A file given directly is taken whatever its suffix; in folders, hidden files are skipped.

    Returns:
        the files, in the order of `paths` (each folder's files sorted).

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no image (one line naming it).
    """
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no image ({' '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    return files


# ------------------------------------------------------------------------------------ image files
# What PIL raises for a corrupt, truncated or non-image file, depending on the format.
_PIL_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def _open_image(path: str | os.PathLike) -> Image.Image:
    """The file as an opened (not yet decoded) PIL image, read in one call.

    PIL reading the file itself issues dozens of small reads per image, and on some file systems
    each costs tens of microseconds; one read and decoding from memory avoids that.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an image PIL recognises (one line naming the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        return Image.open(io.BytesIO(path.read_bytes()))
    except UnidentifiedImageError as exc:
        # PIL's message names the in-memory buffer, not the file: say what is wrong instead.
        raise ValueError(f"{path}: cannot read image (not a known image format, or a corrupt header)") from exc
    except _PIL_ERRORS as exc:
        raise ValueError(f"{path}: cannot read image ({one_line(exc)})") from exc


def _decode_error(path: str | os.PathLike, exc: BaseException) -> ValueError:
    return ValueError(f"{path}: cannot read image ({one_line(exc)})")


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


def read_image(
    path: str | os.PathLike,
    channels: Channels = 3,
    background: int | tuple[int, int, int] = 0,
    float_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Read one image file of any PIL mode as uint8 (H, W, channels) (classification's reader).

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
        FileNotFoundError: no such file.
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
    with _open_image(path) as image:
        try:
            rawmode = _tile_rawmode(image)
            image.load()
        except _PIL_ERRORS as exc:
            raise _decode_error(path, exc) from exc
        try:
            pixels = _pil_to_uint8(
                image, rawmode, (int(background[0]), int(background[1]), int(background[2])), float_range
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return to_channels(pixels, channels)


def jpeg_reduction(box_hw: tuple[int, int], out_hw: tuple[int, int], oversample: float = 2.0) -> int:
    """The largest JPEG reduction (1, 2, 4 or 8) that keeps a crop of `box_hw` pixels at least
    `oversample` times the `out_hw` it is resized to, on both sides."""
    for scale in (8, 4, 2):
        if box_hw[0] / scale >= oversample * out_hw[0] and box_hw[1] / scale >= oversample * out_hw[1]:
            return scale
    return 1


def read_image_crop(
    path: str | os.PathLike,
    choose_box: Callable[[int, int], tuple[int, int, int, int]],
    out_hw: tuple[int, int],
    channels: Channels = 3,
    background: int | tuple[int, int, int] = 0,
    float_range: tuple[float, float] = (0.0, 1.0),
    oversample: float = 2.0,
) -> np.ndarray:
    """The pixels of one crop of an image file, decoding no more than the crop needs.

    `choose_box` gets the file's (height, width) from its header, before any pixel is decoded, and
    returns the crop ``(top, left, box_h, box_w)`` in those full-resolution pixels (a random
    resized crop samples it there, so its statistics do not depend on how the file is decoded).
    A baseline or progressive JPEG in RGB or greyscale is then decoded by OpenCV (libjpeg-turbo,
    straight to interleaved pixels, EXIF orientation ignored as `read_image` does), at 1/2, 1/4
    or 1/8 of its size when the crop still keeps `oversample` x `out_hw` pixels there
    (`jpeg_reduction`), and the box is mapped onto the reduced grid (its edges rounded to the
    nearest reduced pixel, less than one reduced pixel off). Every other file, and every mode
    `read_image` converts (palette, alpha, CMYK, 16-bit ...), goes through `read_image` and the
    same box at full resolution.

    Args:
        choose_box: (height, width) -> (top, left, box_h, box_w), inside the image.
        out_hw: the size the caller resizes the crop to (decides the reduction only).
        channels, background, float_range: as `read_image`.
        oversample: the least ratio of decoded crop pixels to output pixels per side; 2 keeps
            a bicubic resize from the reduced image close to one from the full image.

    Returns:
        uint8 (h', w', channels) RGB (or grey): the box, at full or reduced resolution.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file when it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt, mode, (width, height) = header.format, header.mode, header.size
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path}: cannot read image (not a known image format, or a corrupt header)") from exc
    except _PIL_ERRORS as exc:
        raise ValueError(f"{path}: cannot read image ({one_line(exc)})") from exc
    top, left, box_h, box_w = choose_box(height, width)
    if fmt == "JPEG" and (mode, channels) in (("RGB", 3), ("L", 3), ("L", 1)):
        import cv2  # here, not at the top: most users of this module never decode a crop

        # JPEG files decode at 1/scale of their size in the DCT domain (libjpeg's scale_denom),
        # which costs a fraction of a full decode and is itself a properly filtered downscale.
        scale = jpeg_reduction((box_h, box_w), out_hw, oversample)
        flags = {
            (3, 1): cv2.IMREAD_COLOR, (3, 2): cv2.IMREAD_REDUCED_COLOR_2, (3, 4): cv2.IMREAD_REDUCED_COLOR_4,
            (3, 8): cv2.IMREAD_REDUCED_COLOR_8, (1, 1): cv2.IMREAD_GRAYSCALE, (1, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
            (1, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4, (1, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
        }[channels, scale]
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
        if pixels is not None:
            # libjpeg rounds a reduced side up: ceil(side / scale).
            rows, cols = pixels.shape[:2]
            y0, y1 = round(top * rows / height), round((top + box_h) * rows / height)
            x0, x1 = round(left * cols / width), round((left + box_w) * cols / width)
            y0, x0 = min(y0, rows - 1), min(x0, cols - 1)
            region = pixels[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
            if channels == 1:
                return np.ascontiguousarray(region[:, :, None])
            return cv2.cvtColor(region, cv2.COLOR_BGR2RGB)  # also makes the crop contiguous
        # OpenCV could not decode what PIL could open: let read_image raise (or manage) below.
    image = read_image(path, channels, background, float_range)
    return np.ascontiguousarray(image[top:top + box_h, left:left + box_w])


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB, whatever PIL mode it is stored in (detection's reader).

    Grey, palette, CMYK, YCbCr and alpha images go through PIL's ``convert("RGB")`` (a palette
    with transparency through RGBA first; alpha is dropped). 16/32-bit integer and float images
    ("I;16", "I", "F") are rescaled linearly from their min..max to 0..255 (PIL would clip
    them), then replicated to three channels. EXIF orientation is not applied: boxes refer to
    the stored pixel grid.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file when PIL cannot decode it.
    """
    with _open_image(path) as image:
        try:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                values = np.asarray(image, dtype=np.float64)
                low, high = float(values.min()), float(values.max())
                scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
                grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            return np.asarray(rgb, dtype=np.uint8).copy()
        except _PIL_ERRORS as exc:
            raise _decode_error(path, exc) from exc


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to a float32 (H, W) grey slice in [0, 1] (segmentation's reader).

    16-bit images ("I;16*") are divided by 65535, 32-bit integer ones ("I") by their maximum
    (at least 1); every other mode goes through PIL's ``convert("L")`` and is divided by 255.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file when PIL cannot decode it.
    """
    with _open_image(path) as image:
        try:
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                array = np.asarray(image, dtype=np.float32)
                return array / 65535.0 if image.mode.startswith("I;16") else array / max(float(array.max()), 1.0)
            return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        except _PIL_ERRORS as exc:
            raise _decode_error(path, exc) from exc


# ------------------------------------------------------------------------------------ IDX files
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
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IDX file not found")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({one_line(exc)})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format), plain or gzip-compressed.

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), a dimension count, then one big-endian uint32 per dimension;
    the data follows big-endian, row-major, and must fill the shape exactly.

    Returns:
        A writable array of the stored shape in the native byte order: for MNIST /
        Fashion-MNIST images (N, 28, 28) uint8, for labels (N,) uint8.

    Raises:
        FileNotFoundError: no such file.
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

    Raises:
        ValueError: another dtype, or a 0-d array.
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


# ------------------------------------------------------------------------------------ validation
# data.on_bad_sample: what a task does with a training sample the up-front check finds unreadable.
BadSamplePolicy = Literal["error", "skip"]
# The run-folder file listing the training samples left out under data.on_bad_sample=skip.
SKIPPED_SAMPLES_FILE = "skipped_samples.txt"
# Header checks are file-system bound (open, a few KiB read): threads overlap the waits.
_CHECK_THREADS = 8


def image_header_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file when PIL does not recognise it as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path}: cannot read image (not a known image format, or a corrupt header)") from exc
    except _PIL_ERRORS as exc:
        raise ValueError(f"{path}: cannot read image ({one_line(exc)})") from exc
    if width < 1 or height < 1:
        raise ValueError(f"{path}: image header says {width}x{height} pixels (w x h)")
    return int(width), int(height)


def find_bad_files(
    names: Sequence[str], check: Callable[[int], object], threads: int = _CHECK_THREADS
) -> list[tuple[str, str]]:
    """Run `check(i)` for every item in a thread pool; the items whose check raised.

    Args:
        names: the name of each item (a file path), reported with its problem.
        check: raises FileNotFoundError, OSError or ValueError when item i is unusable (what it
            returns is ignored).
        threads: at most this many checks at once (fewer for checks that hold large arrays).

    Returns:
        (name, one-line reason) of each failing item, in item order.
    """
    def run(index: int) -> tuple[str, str] | None:
        try:
            check(index)
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            # The readers' messages start with the path: keep the reason alone.
            prefix = f"{names[index]}: "
            return names[index], reason[len(prefix):] if reason.startswith(prefix) else reason
        return None

    if len(names) <= 1:
        results = [run(i) for i in range(len(names))]
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(names))) as pool:
            results = list(pool.map(run, range(len(names))))
    return [result for result in results if result is not None]


def bad_samples_error(problems: Sequence[tuple[str, str]], split: str, total: int, hint: str = "") -> ValueError:
    """The one-line error for `problems` ((name, reason) pairs) found in a `split` set of `total` items."""
    name, reason = problems[0]
    more = f" (and {len(problems) - 1} more of the {total} {split} files have problems)" if len(problems) > 1 else ""
    return ValueError(f"{name}: {reason}{more}{hint}")


def handle_bad_samples(
    problems: Sequence[tuple[str, str]],
    *,
    split: Literal["training", "evaluation"],
    total: int,
    on_bad_sample: BadSamplePolicy,
    output_dir: str | os.PathLike | None,
) -> set[str]:
    """Act on the problems the up-front check found: raise, or (training with skip) list and leave out.

    Evaluation files are never skipped: a metric over a silently smaller set would not compare
    with other runs. Under ``skip`` the skipped training files are logged as one warning and
    written to ``<output_dir>/skipped_samples.txt`` (one ``path<TAB>reason`` a line).

    Returns:
        The names of the samples to leave out (empty when there are no problems).

    Raises:
        ValueError: one line naming the first bad file, its problem, and how many others have one.
    """
    if not problems:
        return set()
    if split != "training" or on_bad_sample != "skip":
        hint = " (data.on_bad_sample=skip leaves unreadable training samples out)" if split == "training" else ""
        raise bad_samples_error(problems, split, total, hint)
    if len(problems) >= total:
        raise bad_samples_error(problems, split, total, " (data.on_bad_sample=skip: no training sample is readable)")
    logger.warning("data.on_bad_sample=skip: leaving out %d of %d training samples that cannot be read (first: %s: %s)",
                   len(problems), total, problems[0][0], problems[0][1])
    if output_dir is not None:
        path = Path(output_dir) / SKIPPED_SAMPLES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{name}\t{reason}\n" for name, reason in problems), encoding="utf-8")
        logger.warning("skipped training samples listed in %s", path)
    return {name for name, _ in problems}
