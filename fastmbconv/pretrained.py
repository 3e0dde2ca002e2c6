"""timm's pretrained configurations for EfficientNet B0-B7, as data.

One row per (name, tag) in ``pretrained_cfgs.txt`` beside this file, in timm's order (an
architecture's first row with weights is its default tag), with timm's values: the eval input size and crop, the normalisation, the test-time
size, where timm publishes the weights (the Hugging Face Hub id ``timm/<name>.<tag>``, and the
older release URL). :func:`pretrained_cfg` turns a row into the ``pretrained_cfg`` dict a timm
model carries (the same keys, in the same order), which :func:`fastmbconv.eval_transform` reads.
Loading the weights themselves is :mod:`fastmbconv.weights`.
"""
from __future__ import annotations

import copy
from importlib import resources
from typing import Mapping, Optional

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
_URL_BASES = {
    "r": "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/",
    "h": "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-weights/",
}


def _parse(table: str) -> dict[str, dict[str, dict]]:
    cfgs: dict[str, dict[str, dict]] = {}
    for line in table.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, size, crop, norm, test_size, test_crop, url, *extras = line.split()
        arch, tag = name.split(".")
        opts = dict(e.split("=") if "=" in e else (e, True) for e in extras)
        mean, std = (INCEPTION_MEAN, INCEPTION_STD) if norm == "inc" else (IMAGENET_MEAN, IMAGENET_STD)
        size = int(size)
        cfg = {"url": "" if url == "-" else _URL_BASES[url[0]] + url[2:]}
        if "untrained" not in opts:
            cfg["hf_hub_id"] = f"timm/{arch}.{tag}"
        cfg.update(architecture=arch, tag=tag, custom_load=False, input_size=(3, size, size))
        if test_size != "-":
            cfg["test_input_size"] = (3, int(test_size), int(test_size))
        cfg.update(fixed_input_size=False, interpolation="bicubic", crop_pct=float(crop))
        if test_crop != "-":
            cfg["test_crop_pct"] = float(test_crop)
        cfg.update(crop_mode=opts.get("crop_mode", "center"), mean=mean, std=std,
                   num_classes=int(opts.get("classes", 1000)), pool_size=(-(-size // 32),) * 2,
                   first_conv="conv_stem", classifier="classifier", license="apache-2.0")
        cfgs.setdefault(arch, {})[tag] = cfg
    return cfgs


#: architecture -> tag -> timm's pretrained_cfg, tags in timm's order.
# The rows live in pretrained_cfgs.txt beside this file (its header names the columns).
PRETRAINED_CFGS: dict[str, dict[str, dict]] = _parse(
    resources.files(__package__).joinpath("pretrained_cfgs.txt").read_text(encoding="utf-8"))


def has_weights(cfg: dict) -> bool:
    return bool(cfg.get("hf_hub_id") or cfg.get("url"))


def default_tag(arch: str) -> str:
    """timm's default tag of ``arch``: its first tag with weights, else its first tag."""
    tags = PRETRAINED_CFGS[arch]
    return next((t for t, c in tags.items() if has_weights(c)), next(iter(tags)))


def pretrained_cfg(arch: str, tag: Optional[str] = None) -> dict:
    """A copy of timm's ``pretrained_cfg`` for ``arch`` and ``tag`` (default: timm's default
    tag). ``arch`` and ``tag`` must be known (see :func:`fastmbconv.builders.resolve_model_name`)."""
    return copy.deepcopy(PRETRAINED_CFGS[arch][tag or default_tag(arch)])


def whole_cfg(arch: str, given: Mapping) -> dict:
    """A configuration the caller gave whole, as timm completes it: the architecture's name and
    the defaults of timm's ``PretrainedCfg`` under the given entries."""
    return {"architecture": arch, "custom_load": False, "input_size": (3, 224, 224), "fixed_input_size": False,
            "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center", "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD, "num_classes": 1000, "pool_size": None, "first_conv": None, "classifier": None,
            **given}


def generic_cfg(resolution: int, num_classes: int = 1000) -> dict:
    """The configuration of a model with no published weights (a custom scale): timm's
    defaults at the model's own resolution."""
    return {"input_size": (3, resolution, resolution), "fixed_input_size": False, "interpolation": "bicubic",
            "crop_pct": 0.875, "crop_mode": "center", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "num_classes": num_classes, "pool_size": (-(-resolution // 32),) * 2, "first_conv": "conv_stem",
            "classifier": "classifier"}


def for_features(cfg: dict) -> dict:
    """A backbone's configuration: timm drops the classifier's keys."""
    return {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "global_pool")}
