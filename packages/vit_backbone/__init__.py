"""vit_backbone: the shared Vision Transformer of vitasks.

No task code and no Accelerate here: a model, its layers, presets, weight import and the
feature API (`forward_features`, `forward_intermediates`, `feature_specs`) every head builds on.
"""

from .attention import Attention, resolve_attention_kernel, sdpa_without_cudnn
from .block import Block
from .config import BackboneConfig, build_backbone, build_backbone_with_report, checkpoint_head_shape
from .conv_stem import ConvStemEmbed
from .features import FeatureSpec, ViTFeatures
from .hybrid import HybridEmbed
from .patch_embed import PatchEmbed
from .pos_embed import RESAMPLERS, resample_pos_embed, sincos_1d, sincos_2d
from .presets import PRESETS, create_vit, preset_config, preset_names
from .vit import VisionTransformer
from .weights import LoadReport, convert_state_dict, detect_layout, load_pretrained, load_state_dict_file

__all__ = [
    "Attention",
    "BackboneConfig",
    "Block",
    "ConvStemEmbed",
    "FeatureSpec",
    "HybridEmbed",
    "LoadReport",
    "PRESETS",
    "PatchEmbed",
    "RESAMPLERS",
    "ViTFeatures",
    "VisionTransformer",
    "build_backbone",
    "build_backbone_with_report",
    "checkpoint_head_shape",
    "convert_state_dict",
    "create_vit",
    "detect_layout",
    "load_pretrained",
    "load_state_dict_file",
    "preset_config",
    "preset_names",
    "resample_pos_embed",
    "resolve_attention_kernel",
    "sdpa_without_cudnn",
    "sincos_1d",
    "sincos_2d",
]
