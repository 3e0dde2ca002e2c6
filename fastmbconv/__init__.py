"""fastmbconv: a kernel-accelerated EfficientNet for PyTorch.

``import fastmbconv`` needs only torch: the Triton kernels and the compiled extension are
imported lazily, when a fused or extension-backed call first needs them.
"""
from .backend import get_backend, set_backend, use_backend
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
from .flops import count_flops, count_params, format_table, model_table
from .roofline import measure_copy_bandwidth
from .model import (
    MODEL_BUILDERS,
    EfficientNet,
    StateDictMismatchError,
    efficientnet,
    efficientnet_b0,
    efficientnet_b1,
    efficientnet_b2,
    efficientnet_b3,
    efficientnet_b4,
    efficientnet_b5,
    efficientnet_b6,
    efficientnet_b7,
)

__version__ = "0.1.0"

# Image preparation lives beside the compiled extension; it is imported on first use so that
# `import fastmbconv` never touches fastmbconv._ext/_C (the op's fake impl is registered when
# the extension loads).
_LAZY = {"prepare_images", "prepare_images_ref", "IMAGENET_MEAN", "IMAGENET_STD"}


def __getattr__(name):
    if name in _LAZY:
        from . import prepare

        return getattr(prepare, name)
    raise AttributeError(f"module 'fastmbconv' has no attribute {name!r}")
