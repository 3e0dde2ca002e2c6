"""Loading published or local weights into a fastmbconv EfficientNet.

- :func:`read_checkpoint`: a local file, safetensors or a torch file read with
  ``torch.load(weights_only=True)`` (never unpickling arbitrary objects), in timm's or
  torchvision's key format, bare or wrapped as training scripts save it;
- :func:`hub_state_dict`: timm's weights from the Hugging Face Hub, through ``huggingface_hub``
  (its cache, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` apply), looking for
  ``model.safetensors`` then ``pytorch_model.bin`` as timm does;
- :func:`load_weights`: adapts a state dict to the model as timm does (a classifier of another
  size is left out, the stem conv is adapted to other input channels) and loads it strictly.

``huggingface_hub`` and ``safetensors`` are optional (``pip install 'fastmbconv[pretrained]'``)
and imported only here, when weights are loaded.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from .model import StateDictMismatchError

#: The files timm publishes per Hub repository, in the order they are tried.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # timm's order, EMA first
_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, or no weights could be found; the message says what
    was looked for and how to pass a local file."""


def _optional(module: str, purpose: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CheckpointError(
            f"{purpose} needs the optional package {module.split('.')[0]!r} ({exc}); install it with "
            "pip install 'fastmbconv[pretrained]', or save the weights with torch.save and pass "
            "checkpoint_path=<file>") from None


def _unwrap(checkpoint, path) -> dict:
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state dict")
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    out = {}
    for key, value in checkpoint.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    return out


def is_torchvision_format(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("features.") for k in state_dict) and "conv_stem.weight" not in state_dict


def read_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """The state dict in a local checkpoint file, in timm's key names (torchvision's are
    renamed). ``.safetensors`` files are read with safetensors, anything else with
    ``torch.load(weights_only=True)``; ``state_dict_ema``/``model_ema``/``state_dict``/``model``
    wrappers and ``module.``/``_orig_mod.`` prefixes are removed."""
    from .convert import torchvision_to_timm_keys

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            st = _optional("safetensors.torch", f"reading {path.name}")
            checkpoint = st.load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"could not read checkpoint {str(path)!r}: {type(exc).__name__}: {exc}"[:600]) from exc
    state_dict = _unwrap(checkpoint, path)
    return dict(torchvision_to_timm_keys(state_dict)) if is_torchvision_format(state_dict) else state_dict


def hub_state_dict(cfg: Mapping, cache_dir: Optional[Union[str, os.PathLike]] = None) -> dict:
    """timm's published weights for a ``pretrained_cfg`` (its ``hf_hub_id``), from the Hugging
    Face Hub or its local cache."""
    repo = cfg.get("hf_hub_id")
    name = ".".join(filter(None, (cfg.get("architecture"), cfg.get("tag")))) or "this model"
    if not repo:
        raise CheckpointError(f"timm publishes no weights for {name}; use pretrained=False, or pass "
                              "checkpoint_path=<file> to load your own")
    hub = _optional("huggingface_hub", f"downloading {repo}")
    constants = _optional("huggingface_hub.constants", f"downloading {repo}")
    tried = []
    for filename in HUB_FILES:
        if filename.endswith(".safetensors"):
            if importlib.util.find_spec("safetensors") is None:
                tried.append(f"{filename}: skipped, safetensors is not installed")
                continue
        try:
            local = hub.hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir)
        except Exception as exc:  # not in the repository, not cached offline, no network
            tried.append(f"{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            continue
        return read_checkpoint(local)
    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    where = cache_dir or constants.HF_HUB_CACHE
    raise CheckpointError(
        f"no pretrained weights for {name}: looked for {' and '.join(HUB_FILES)} in Hugging Face Hub "
        f"repository {repo!r} (cache {str(where)!r}, offline mode {'on' if offline else 'off'}):\n  "
        + "\n  ".join(tried)
        + "\nDownload the file where there is network (e.g. huggingface_hub.hf_hub_download"
        f"({repo!r}, 'model.safetensors')) and pass checkpoint_path=<that file>, or point cache_dir/"
        "HF_HUB_CACHE at a cache that holds it.")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A 3-channel stem conv weight for ``in_chans`` inputs, as timm adapts it: summed over
    RGB for one channel, else the RGB filters repeated and scaled by 3 / in_chans."""
    base = weight.shape[1]
    if in_chans == base:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_chans / base), 1, 1)[:, :in_chans] * (base / in_chans)
    return w.to(weight.dtype)


def load_weights(model, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load timm-keyed weights into ``model`` as timm's ``load_pretrained`` does: a classifier
    whose size differs from the model's is left at its fresh init, a features-only model takes
    no head, the stem conv is adapted to the model's input channels; everything else must fit
    exactly (:class:`~fastmbconv.StateDictMismatchError` lists what does not)."""
    state_dict = dict(state_dict)
    head = ("conv_head.", "bn2.", "classifier.")
    if model.features_only:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    elif not isinstance(model.classifier, torch.nn.Linear) or (
            "classifier.weight" in state_dict
            and tuple(state_dict["classifier.weight"].shape) != tuple(model.classifier.weight.shape)):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        state_dict.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    stem = state_dict.get("conv_stem.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] != model.in_chans:
        state_dict["conv_stem.weight"] = adapt_input_conv(stem, model.in_chans)
    try:
        model.load_state_dict(state_dict, strict=True)
    except StateDictMismatchError as exc:
        raise StateDictMismatchError(f"{source} does not fit this {getattr(model, 'variant', 'EfficientNet')}:\n"
                                     f"{exc}") from None
