"""vit_classification: image classification on the shared ViT backbone.

Data side: `data` reads IDX (MNIST / Fashion-MNIST), ImageFolder and CIFAR-10/100 into uint8
(H, W, C) images; `transforms` turns them into normalised tensors (albumentations) and mixes
batches (timm's Mixup/CutMix with label smoothing); `visualize` draws the confusion matrix and
prediction grids.
"""

from .api import Classification, Classifier
from .data import (
    CIFAR10_CLASSES,
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    IMAGE_EXTENSIONS,
    MNIST_CLASSES,
    Cifar10Dataset,
    Cifar100Dataset,
    IdxDataset,
    ImageFolderDataset,
    default_cache_dir,
    find_fashion_mnist,
    find_mnist,
    read_cifar_pickle,
    read_idx,
    read_image,
    to_channels,
    write_idx,
)
from .transforms import (
    ImageTransform,
    build_eval_transform,
    build_mixup,
    build_train_transform,
    eval_resize_size,
    random_erase,
    random_translate,
)

__all__ = [
    "CIFAR10_CLASSES",
    "Classification",
    "Classifier",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "MNIST_CLASSES",
    "Cifar10Dataset",
    "Cifar100Dataset",
    "IdxDataset",
    "ImageFolderDataset",
    "ImageTransform",
    "build_eval_transform",
    "build_mixup",
    "build_train_transform",
    "default_cache_dir",
    "eval_resize_size",
    "find_fashion_mnist",
    "find_mnist",
    "read_image",
    "random_erase",
    "random_translate",
    "read_cifar_pickle",
    "read_idx",
    "to_channels",
    "write_idx",
]
