"""Classification datasets in the formats users bring: IDX (MNIST / Fashion-MNIST), ImageFolder, CIFAR.

Every dataset here returns ``(image, label)`` where ``image`` is a uint8 numpy array of shape
(H, W, channels) with ``channels`` 1 or 3 as asked, and ``label`` a Python int; given a
``transform`` (any callable taking that array, e.g. `vit_classification.transforms.ImageTransform`)
it returns ``(transform(image), label)`` instead. Every dataset exposes ``classes`` (names, index =
label) and ``targets`` (int64 numpy array of shape (N,)).

Grey data feeds a 3-channel model by replicating the grey plane; colour data feeds a 1-channel
model through luminance with PIL's ITU-R 601-2 weights (the same integers as ``Image.convert("L")``).

Errors about a file are one-line ``ValueError``/``FileNotFoundError`` messages that name the file
and what was expected. Image and IDX files are read by `vit_training.data` (`read_image`,
`read_idx`), shared with the other tasks.

The rest of the module connects the data to a run: `default_normalization` (published statistics
per format), `read_class_names`, `resolve_config` (fills the config values the data decides),
`open_split` (the raw data set of a split) and `AugmentedSamples` (a data set with its seeded
per-sample transform, what the Task's loaders read).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from vit_training.config import ConfigError
from vit_training.data import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    IMAGE_EXTENSIONS,
    SUBSET_SEED,
    BadSamplePolicy,
    find_bad_files,
    handle_bad_samples,
    image_header_size,
    list_images,
    one_line,
    read_idx,
    read_image,
    subset_indices,
    to_channels,
    write_idx,
)
from vit_training.seeding import sample_seed

from .config import ClassificationConfig, DataConfig
from .transforms import DraftCropTransform, ImageTransform

__all__ = [
    "AugmentedSamples",
    "InMemoryImageDataset",
    "CIFAR10_CLASSES",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_CLASSES",
    "SUBSET_SEED",
    "Cifar10Dataset",
    "Cifar100Dataset",
    "IdxDataset",
    "ImageFolderDataset",
    "check_samples",
    "default_cache_dir",
    "default_normalization",
    "find_fashion_mnist",
    "find_mnist",
    "list_images",
    "open_split",
    "read_class_names",
    "read_cifar_pickle",
    "read_idx",
    "read_image",
    "resolve_config",
    "subset_indices",
    "to_channels",
    "write_idx",
]

Channels = Literal[1, 3]
Split = Literal["train", "test"]
Transform = Callable[[np.ndarray], Any]

logger = logging.getLogger(__name__)
# torchvision's names, so predictions files read the same whichever loader made them.
MNIST_CLASSES: tuple[str, ...] = (
    "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
    "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine",
)  # fmt: skip
# Only used when batches.meta is missing; the real archive always has it.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST), read by `vit_training.data.read_idx`
# --------------------------------------------------------------------------------------------------


def _idx_candidates(root: Path, kind: str, split: Split) -> list[Path]:
    """Where one IDX file of a split may sit under `root`, in the order they are tried."""
    published = FASHION_MNIST_FILES[split][0 if kind == "images" else 1]  # MNIST's names too
    # "-idx3-ubyte" is the published name, ".idx3-ubyte" what some unzip tools leave behind.
    names = [published, published.replace("-idx", ".idx")]
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
            f"downloading {name} into {download_root} failed ({one_line(exc)}); {how_to_install}"
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


class ImageFolderDataset(Dataset):
    """torchvision's ImageFolder layout: ``root/<class name>/**/<image>``, classes sorted by name.

    Images are decoded lazily, per item, by `read_image` (any PIL mode, see there).

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
            background: under transparent pixels (default black), see `read_image`.
            float_range: float-image values meaning black and white, see `read_image`.

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
        image = read_image(path, self.channels, self.background, self.float_range)
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
        raise ValueError(f"{path}: not a CIFAR python pickle ({one_line(exc)})") from exc
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


# --------------------------------------------------------------------------------------------------
# Normalisation statistics, class names, and the config values they fill in
# --------------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma weights: the 1-channel statistics of colour data seen as grey (`to_channels`).
_LUMA = (0.299, 0.587, 0.114)


def default_normalization(data_format: str, channels: int) -> tuple[list[float], list[float]]:
    """The (mean, std) of 0..1 pixels of a data format, for `channels` channels.

    Published statistics of the training sets (ImageNet's for ImageFolder, as timm's default).
    Grey statistics are replicated for 3 channels; colour ones become luminance for 1 channel
    (the mean exactly, the std approximately: channel correlations are not known here).
    """
    if data_format == "fashion_mnist":
        mean, std = (0.2860,), (0.3530,)
    elif data_format == "mnist":
        mean, std = (0.1307,), (0.3081,)
    elif data_format == "cifar10":
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    elif data_format == "cifar100":
        mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    elif data_format == "imagefolder":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise ValueError(f"data.format={data_format!r} has no default normalisation")
    if len(mean) == channels:
        return list(mean), list(std)
    if channels == 3:
        return list(mean) * 3, list(std) * 3
    return [sum(w * m for w, m in zip(_LUMA, mean, strict=True))], [sum(w * s for w, s in zip(_LUMA, std, strict=True))]


def _imagefolder_dirs(data: DataConfig) -> tuple[Path, Path | None]:
    """(train tree, validation tree or None when it is not there and was not asked for)."""
    if data.train_dir is None and data.root is None:
        raise FileNotFoundError("data.format='imagefolder' needs data.root (holding train/ and val/) or data.train_dir")
    train = Path(data.train_dir) if data.train_dir is not None else Path(data.root) / "train"
    if data.val_dir is not None:
        return train, Path(data.val_dir)
    val = Path(data.root) / "val" if data.root is not None else None
    return train, (val if val is not None and val.is_dir() else None)


def _idx_dir(data: DataConfig) -> Path:
    if data.format == "fashion_mnist":
        return find_fashion_mnist(data.root, download=data.download)
    return find_mnist(data.root, download=data.download)


def _cifar_class_names(data: DataConfig) -> list[str]:
    if data.root is None:
        raise FileNotFoundError(f"data.format={data.format!r} needs data.root (the folder with the python pickles)")
    root = Path(data.root)
    if data.format == "cifar10":
        folder, meta, key = "cifar-10-batches-py", "batches.meta", "label_names"
    else:
        folder, meta = "cifar-100-python", "meta"
        key = "fine_label_names" if data.cifar100_labels == "fine" else "coarse_label_names"
    path = next((p / meta for p in (root, root / folder) if (p / meta).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"data.root={data.root!r}: no {meta} here or in {root / folder}")
    content = read_cifar_pickle(path)
    if key not in content:
        raise ValueError(f"{path}: no field {key!r}")
    return [str(name) for name in content[key]]


def check_samples(
    source: Dataset,
    indices: np.ndarray | None,
    split: Literal["training", "evaluation"],
    on_bad_sample: BadSamplePolicy = "error",
    output_dir: str | os.PathLike | None = None,
) -> np.ndarray | None:
    """Check the files a split will read before the first step; the indices to keep.

    ImageFolder images are checked from their headers (the file exists, PIL recognises the
    format, the size is positive) in a thread pool; IDX and CIFAR sets were fully checked when
    they were read into memory. See `vit_training.data.handle_bad_samples` for what happens to
    problems (one-line ValueError, or training samples left out under ``on_bad_sample="skip"``).

    Args:
        source: the split's raw data set.
        indices: the source items the split uses (None: all).

    Returns:
        `indices` without the skipped items (an int64 array when any was skipped).
    """
    samples = getattr(source, "samples", None)
    if samples is None:
        return indices
    used = np.arange(len(source)) if indices is None else np.asarray(indices)
    names = [str(samples[int(i)][0]) for i in used]

    def check(k: int) -> None:
        image_header_size(names[k])

    problems = find_bad_files(names, check)
    skipped = handle_bad_samples(problems, split=split, total=len(names), on_bad_sample=on_bad_sample,
                                 output_dir=output_dir)
    if not skipped:
        return indices
    return np.array([i for i, name in zip(used, names, strict=True) if name not in skipped], dtype=np.int64)


def open_split(data: DataConfig, train: bool) -> Dataset | None:
    """The raw data set (no transform) of the training or the evaluation split `data` describes.

    Returns:
        An `IdxDataset`, `ImageFolderDataset`, `Cifar10Dataset` or `Cifar100Dataset` of uint8
        (H, W, data.channels) images; None for an ImageFolder validation tree that is not there.
    """
    if data.format in ("fashion_mnist", "mnist"):
        classes = FASHION_MNIST_CLASSES if data.format == "fashion_mnist" else MNIST_CLASSES
        return IdxDataset(_idx_dir(data), "train" if train else "test", classes=classes, channels=data.channels)
    if data.format == "imagefolder":
        train_dir, val_dir = _imagefolder_dirs(data)
        folder = train_dir if train else val_dir
        if folder is None:
            return None
        return ImageFolderDataset(folder, channels=data.channels, background=data.background)
    if data.root is None:
        raise FileNotFoundError(f"data.format={data.format!r} needs data.root (the folder with the python pickles)")
    split = "train" if train else "test"
    if data.format == "cifar10":
        return Cifar10Dataset(data.root, split, channels=data.channels)
    return Cifar100Dataset(data.root, split, labels=data.cifar100_labels, channels=data.channels)


def read_class_names(data: DataConfig) -> list[str]:
    """The class names of the data `data` describes, index = label, without loading any image.

    IDX formats have fixed names; ImageFolder lists the training tree's class folders (sorted,
    as `ImageFolderDataset`); CIFAR reads its meta file.
    """
    if data.format == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    if data.format == "mnist":
        return list(MNIST_CLASSES)
    if data.format == "imagefolder":
        train, _ = _imagefolder_dirs(data)
        if not train.is_dir():
            raise FileNotFoundError(f"{train}: image folder does not exist (data.root / data.train_dir)")
        names = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise FileNotFoundError(f"{train}: no class folders, expected {train}/<class name>/<images>")
        return names
    return _cifar_class_names(data)


def resolve_config(config: ClassificationConfig) -> ClassificationConfig:
    """A copy of `config` with the values it leaves to the data filled in.

    `data.class_names` (`read_class_names`), `model.num_classes` (their count), `model.backbone.in_chans`
    (`data.channels`), `model.backbone.img_size` (`data.input_size`) and `data.mean` / `data.std`
    (`default_normalization`). Saved as the run's config.yaml, the result rebuilds the same model
    and names its predictions without the data (for `predict`).

    When the data cannot be read but `model.num_classes` is set (predicting on another machine
    with a hand-written config), the classes are named "0", "1", ... with a warning.

    Raises:
        FileNotFoundError: the class names are needed and the data is not there.
        ConfigError: a set value disagrees with the data (one line naming both).
    """
    model, data = config.model, config.data
    names = list(data.class_names) if data.class_names is not None else None
    if names is None:
        try:
            names = read_class_names(data)
        except (FileNotFoundError, ValueError) as error:
            if model.num_classes is None:
                raise
            logger.warning("class names unavailable (%s); naming the classes by index", error)
            names = [str(index) for index in range(model.num_classes)]
    if model.num_classes is not None and model.num_classes != len(names):
        raise ConfigError(
            f"model.num_classes={model.num_classes} but the data has {len(names)} classes ({', '.join(names[:4])}, ...)"
        )
    backbone = model.backbone
    if backbone.in_chans is not None and backbone.in_chans != data.channels:
        raise ConfigError(
            f"model.backbone.in_chans={backbone.in_chans} but data.channels={data.channels}; the data is converted "
            f"to the model's channels, so set data.channels (or leave model.backbone.in_chans null)"
        )
    backbone = dataclasses.replace(
        backbone,
        in_chans=data.channels,
        img_size=backbone.img_size if backbone.img_size is not None else data.input_size,
    )
    model = dataclasses.replace(model, backbone=backbone, num_classes=len(names))
    mean, std = default_normalization(data.format, data.channels)
    data = dataclasses.replace(
        data,
        class_names=names,
        mean=data.mean if data.mean is not None else mean,
        std=data.std if data.std is not None else std,
    )
    return dataclasses.replace(config, model=model, data=data)


# --------------------------------------------------------------------------------------------------
# Samples with their transform (what the Task's data loaders read)
# --------------------------------------------------------------------------------------------------


class AugmentedSamples(Dataset):
    """A classification data set with its transform: item i -> (image (C, H, W), label, i).

    With `seed` set (training), every item reseeds a random transform from (seed, epoch, i) before
    drawing its random crop/flip/colour: the same (epoch, i) always gives the same tensor, in any
    process, DataLoader worker or resumed run. Without it (evaluation) the transform is used as is.

    With `cache`, a deterministic pipeline (evaluation, or training whose transform draws
    nothing: `ImageTransform.is_random` False) runs once per item: the first read keeps the
    tensor, later epochs reuse it. On small images the pipeline is a large share of an epoch
    (Fashion-MNIST's 28 -> 32 px resize and normalisation). The cache lives in the process that reads the items (the main
    process with ``num_workers=0``, else each worker; persistent workers keep theirs between
    epochs) and takes C * H * W * 4 bytes per item (245 MB for 60,000 images of 1 x 32 x 32).

    Attributes:
        source: the underlying data set (returning uint8 (H, W, C) images, no transform).
        classes: class names, index = label.
        targets: (len,) int64 labels of the items.
    """

    def __init__(
        self,
        source: Dataset,
        transform: ImageTransform | DraftCropTransform,
        indices: np.ndarray | None = None,
        seed: int | None = None,
        cache: bool = False,
        skip_unreadable: bool = False,
    ) -> None:
        """
        Args:
            source: an `IdxDataset`, `ImageFolderDataset`, `Cifar10Dataset` or `Cifar100Dataset`
                built without a transform.
            transform: the per-sample pipeline. A `DraftCropTransform` on an `ImageFolderDataset`
                reads each file through its `load` (the crop sampled from the header, then only
                what it needs decoded); on any other source it crops the decoded image.
            indices: the items of `source` to use (a subset), None for all.
            seed: the run's seed for per-sample reseeding; None for a deterministic (eval) transform.
            cache: keep each transformed item after its first read (see above).
            skip_unreadable: an item whose file became unreadable after the up-front check
                (``data.on_bad_sample=skip``) is replaced by the next readable item, with a
                warning, instead of stopping the run.

        Raises:
            ValueError: `cache` with a training transform that draws random ops (its output
                must change from epoch to epoch, so it cannot be kept).
        """
        if cache and seed is not None and transform.is_random:
            raise ValueError(
                "data.cache_samples keeps each transformed training image, but this training pipeline draws "
                "random ops (augment.scale / ratio other than [1, 1], hflip > 0 or color_ops > 0): turn the "
                "cache off or the augmentation off"
            )
        self.source = source
        self.transform = transform
        self.indices = indices
        self.seed = seed
        self.epoch = 0
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.skip_unreadable = skip_unreadable
        self.reads_crops = isinstance(transform, DraftCropTransform) and isinstance(source, ImageFolderDataset)
        self.classes: list[str] = list(source.classes)
        targets = np.asarray(source.targets)
        self.targets = targets if indices is None else targets[indices]

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the augmentation seeds are drawn for (the loop calls it every epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.targets)

    def source_index(self, index: int) -> int:
        """The index in `source` of item `index`."""
        return int(self.indices[index]) if self.indices is not None else int(index)

    def sample_name(self, index: int) -> str:
        """The image file of item `index` (ImageFolder), else its index in the source data set."""
        source_index = self.source_index(index)
        samples = getattr(self.source, "samples", None)
        return str(samples[source_index][0]) if samples is not None else str(source_index)

    def _read(self, index: int) -> tuple[int, Any]:
        """(item index, source image) of item `index`, or of the next readable item when skipping."""
        for step in range(len(self) if self.skip_unreadable else 1):
            candidate = (index + step) % len(self)
            try:
                return candidate, self.source[self.source_index(candidate)][0]
            except (OSError, ValueError) as exc:
                if not self.skip_unreadable:
                    raise
                logger.warning("data.on_bad_sample=skip: %s; using the next sample instead", one_line(exc))
        raise ValueError(f"no readable sample left among the {len(self)} training samples")

    def _read_crop(self, index: int) -> tuple[int, torch.Tensor]:
        """(item index, transformed tensor) through `DraftCropTransform.load`, skipping like `_read`."""
        source = self.source
        for step in range(len(self) if self.skip_unreadable else 1):
            candidate = (index + step) % len(self)
            if self.seed is not None and self.transform.is_random:
                self.transform.set_seed(sample_seed(self.seed, self.epoch, candidate))
            path = source.samples[self.source_index(candidate)][0]
            try:
                return candidate, self.transform.load(path, source.background, source.float_range)
            except (OSError, ValueError) as exc:
                if not self.skip_unreadable:
                    raise
                logger.warning("data.on_bad_sample=skip: %s; using the next sample instead", one_line(exc))
        raise ValueError(f"no readable sample left among the {len(self)} training samples")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        if self.cache is not None and index in self.cache:
            return self.cache[index], int(self.targets[index]), int(index)
        if self.reads_crops:
            index, tensor = self._read_crop(index)
            if self.cache is not None:
                self.cache[index] = tensor
            return tensor, int(self.targets[index]), int(index)
        index, image = self._read(index)
        label = int(self.targets[index])
        if self.seed is not None and self.transform.is_random:
            self.transform.set_seed(sample_seed(self.seed, self.epoch, index))
        tensor = self.transform(image)
        if self.cache is not None:
            self.cache[index] = tensor
        return tensor, label, int(index)
