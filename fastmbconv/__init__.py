"""fastmbconv: a kernel-accelerated EfficientNet for PyTorch.

``import fastmbconv`` needs only torch: the Triton kernels and the compiled extension are
imported lazily, when a fused or extension-backed call first needs them.
"""
from .backend import get_backend, set_backend, use_backend
from .builders import (
    ARCHITECTURES,
    MODEL_BUILDERS,
    UnknownModelError,
    create_model,
    efficientnet,
    efficientnet_b0,
    efficientnet_b1,
    efficientnet_b2,
    efficientnet_b3,
    efficientnet_b4,
    efficientnet_b5,
    efficientnet_b6,
    efficientnet_b7,
    list_models,
    resolve_model_name,
    split_model_name,
)
from .config import (
    B0_STAGES,
    VARIANTS,
    CompoundScale,
    StageConfig,
    compound_scaling,
    round_channels,
    round_repeats,
    scale_stages,
)
from .convert import from_state_dict, from_timm, from_torchvision
from .features import FeatureInfo
from .flops import count_flops, count_params, format_table, model_table
from .model import EfficientNet, StateDictMismatchError
from .pretrained import PRETRAINED_CFGS, pretrained_cfg
from .weights import CheckpointError, read_checkpoint

__version__ = "0.1.0"

# Imported on first use: image preparation lives beside the compiled extension (its fake impl is
# registered when the extension loads), and the bandwidth measurement in the study package.
_LAZY = {
    "prepare_images": "prepare", "prepare_images_ref": "prepare", "IMAGENET_MEAN": "prepare",
    "IMAGENET_STD": "prepare", "measure_copy_bandwidth": "study.bandwidth",
    "eval_transform": "prepare",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fastmbconv' has no attribute {name!r}")
