"""vit_segmentation: TransUNet-style medical segmentation on the shared ViT backbone.

Modules: `model` (TransUNet: hybrid or plain ViT encoder, cascaded upsampler), `losses`
(cross-entropy + soft Dice), `data` (Synapse npz/h5 as TransUNet distributes it, NIfTI),
`transforms`, `metrics` (per-class 3D Dice and HD95, TransUNet and standard modes), `prepare`
(the MRI-lobe demo data), `visualize` (label overlays), `config` and `task` (the Task `vit_training.fit` runs).
"""

from .api import Segmentation, Segmenter
from .config import SegmentationConfig
from .data import (
    NiftiSliceDataset,
    NiftiVolumeDataset,
    SynapseSliceDataset,
    SynapseVolumeDataset,
    Volume,
    find_nifti_cases,
    read_nifti_volume,
    write_nifti_labels,
)
from .losses import CeDiceLoss, DiceLoss
from .metrics import case_metrics, dice, format_table, hd95, hd95_directed_max, summarize
from .model import TransUNet, build_transunet
from .prepare import prepare_mri_lobes
from .task import SegmentationTask, predict_volume

__all__ = [
    "CeDiceLoss",
    "DiceLoss",
    "NiftiSliceDataset",
    "NiftiVolumeDataset",
    "SegmentationConfig",
    "Segmentation",
    "SegmentationTask",
    "Segmenter",
    "SynapseSliceDataset",
    "SynapseVolumeDataset",
    "TransUNet",
    "Volume",
    "build_transunet",
    "case_metrics",
    "dice",
    "find_nifti_cases",
    "format_table",
    "hd95",
    "hd95_directed_max",
    "predict_volume",
    "prepare_mri_lobes",
    "read_nifti_volume",
    "summarize",
    "write_nifti_labels",
]
