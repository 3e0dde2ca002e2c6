"""timm's pretrained configurations for EfficientNet B0-B7, as data.

One row per (name, tag), in timm's order (an architecture's first row with weights is its
default tag), with timm's values: the eval input size and crop, the normalisation, the test-time
size, where timm publishes the weights (the Hugging Face Hub id ``timm/<name>.<tag>``, and the
older release URL). :func:`pretrained_cfg` turns a row into the ``pretrained_cfg`` dict a timm
model carries (the same keys, in the same order), which :func:`fastmbconv.eval_transform` reads.
Loading the weights themselves is :mod:`fastmbconv.weights`.
"""
from __future__ import annotations

import copy
from typing import Optional

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
_URL_BASES = {
    "r": "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/",
    "h": "https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-weights/",
}

# name.tag | input | crop_pct | mean/std (in: ImageNet, inc: Inception) | test input | test crop |
# release file (r:/h: URL base, - none) | extras (classes=N, crop_mode=M, untrained: no weights)
_TABLE = """
efficientnet_b0.ra_in1k                224 0.875 in  -   -   r:efficientnet_b0_ra-3dd342df.pth
efficientnet_b0.ra4_e3600_r224_in1k    224 0.9   inc 256 1   -
efficientnet_b1.ra4_e3600_r240_in1k    240 0.9   inc 288 1   -
efficientnet_b1.ft_in1k                224 0.875 in  256 1   r:efficientnet_b1-533bc792.pth
efficientnet_b2.ra_in1k                256 0.875 in  288 1   r:efficientnet_b2_ra-bcdf34b7.pth
efficientnet_b3.ra2_in1k               288 0.875 in  320 1   r:efficientnet_b3_ra2-cf984f9c.pth
efficientnet_b4.ra2_in1k               320 0.875 in  384 1   r:efficientnet_b4_ra2_320-7eb33cd5.pth
efficientnet_b5.sw_in12k_ft_in1k       448 1     in  -   -   -                                          crop_mode=squash
efficientnet_b5.sw_in12k               416 0.95  in  -   -   -                                          classes=11821
efficientnet_b6.untrained              528 0.942 in  -   -   -                                          untrained
efficientnet_b7.untrained              600 0.949 in  -   -   -                                          untrained
tf_efficientnet_b0.ns_jft_in1k         224 0.875 in  -   -   r:tf_efficientnet_b0_ns-c0e6a31c.pth
tf_efficientnet_b0.ap_in1k             224 0.875 inc -   -   r:tf_efficientnet_b0_ap-f262efe1.pth
tf_efficientnet_b0.aa_in1k             224 0.875 in  -   -   r:tf_efficientnet_b0_aa-827b6e33.pth
tf_efficientnet_b0.in1k                224 0.875 in  -   -   h:tf_efficientnet_b0-0af12548.pth
tf_efficientnet_b1.ns_jft_in1k         240 0.882 in  -   -   r:tf_efficientnet_b1_ns-99dd0c41.pth
tf_efficientnet_b1.ap_in1k             240 0.882 inc -   -   r:tf_efficientnet_b1_ap-44ef0a3d.pth
tf_efficientnet_b1.aa_in1k             240 0.882 in  -   -   r:tf_efficientnet_b1_aa-ea7a6ee0.pth
tf_efficientnet_b1.in1k                240 0.882 in  -   -   h:tf_efficientnet_b1-5c1377c4.pth
tf_efficientnet_b2.ns_jft_in1k         260 0.89  in  -   -   r:tf_efficientnet_b2_ns-00306e48.pth
tf_efficientnet_b2.ap_in1k             260 0.89  inc -   -   r:tf_efficientnet_b2_ap-2f8e7636.pth
tf_efficientnet_b2.aa_in1k             260 0.89  in  -   -   r:tf_efficientnet_b2_aa-60c94f97.pth
tf_efficientnet_b2.in1k                260 0.89  in  -   -   h:tf_efficientnet_b2-e393ef04.pth
tf_efficientnet_b3.ns_jft_in1k         300 0.904 in  -   -   r:tf_efficientnet_b3_ns-9d44bf68.pth
tf_efficientnet_b3.ap_in1k             300 0.904 inc -   -   r:tf_efficientnet_b3_ap-aad25bdd.pth
tf_efficientnet_b3.aa_in1k             300 0.904 in  -   -   r:tf_efficientnet_b3_aa-84b4657e.pth
tf_efficientnet_b3.in1k                300 0.904 in  -   -   h:tf_efficientnet_b3-e3bd6955.pth
tf_efficientnet_b4.ns_jft_in1k         380 0.922 in  -   -   r:tf_efficientnet_b4_ns-d6313a46.pth
tf_efficientnet_b4.ap_in1k             380 0.922 inc -   -   r:tf_efficientnet_b4_ap-dedb23e6.pth
tf_efficientnet_b4.aa_in1k             380 0.922 in  -   -   r:tf_efficientnet_b4_aa-818f208c.pth
tf_efficientnet_b4.in1k                380 0.922 in  -   -   h:tf_efficientnet_b4-74ee3bed.pth
tf_efficientnet_b5.ns_jft_in1k         456 0.934 in  -   -   r:tf_efficientnet_b5_ns-6f26d0cf.pth
tf_efficientnet_b5.ap_in1k             456 0.934 inc -   -   r:tf_efficientnet_b5_ap-9e82fae8.pth
tf_efficientnet_b5.ra_in1k             456 0.934 in  -   -   r:tf_efficientnet_b5_ra-9a3e5369.pth
tf_efficientnet_b5.aa_in1k             456 0.934 in  -   -   h:tf_efficientnet_b5_aa-99018a74.pth
tf_efficientnet_b5.in1k                456 0.934 in  -   -   h:tf_efficientnet_b5-c6949ce9.pth
tf_efficientnet_b6.ns_jft_in1k         528 0.942 in  -   -   r:tf_efficientnet_b6_ns-51548356.pth
tf_efficientnet_b6.ap_in1k             528 0.942 inc -   -   r:tf_efficientnet_b6_ap-4ffb161f.pth
tf_efficientnet_b6.aa_in1k             528 0.942 in  -   -   r:tf_efficientnet_b6_aa-80ba17e4.pth
tf_efficientnet_b7.ns_jft_in1k         600 0.949 in  -   -   r:tf_efficientnet_b7_ns-1dbc32de.pth
tf_efficientnet_b7.ap_in1k             600 0.949 inc -   -   r:tf_efficientnet_b7_ap-ddb28fec.pth
tf_efficientnet_b7.ra_in1k             600 0.949 in  -   -   r:tf_efficientnet_b7_ra-6c08e654.pth
tf_efficientnet_b7.aa_in1k             600 0.949 in  -   -   h:tf_efficientnet_b7_aa-076e3472.pth
"""


def _parse(table: str) -> dict[str, dict[str, dict]]:
    cfgs: dict[str, dict[str, dict]] = {}
    for line in table.strip().splitlines():
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
PRETRAINED_CFGS: dict[str, dict[str, dict]] = _parse(_TABLE)


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
