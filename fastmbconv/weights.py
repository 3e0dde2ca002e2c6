"""Loading published or local weights into a fastmbconv EfficientNet.

- :func:`read_checkpoint`: a local file, safetensors or a torch file read with
  ``torch.load(weights_only=True)`` (never unpickling arbitrary objects), in timm's or
  torchvision's key format, bare or wrapped as training scripts save it;
- :func:`hub_state_dict`: timm's weights from the Hugging Face Hub, through ``huggingface_hub``
  (its cache, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` apply), looking for
  ``model.safetensors`` then ``pytorch_model.bin`` as timm does;
- :func:`load_weights`: adapts a state dict to the model as timm does (a classifier of another
  size is left out where the caller chose the number of classes, RGB stem weights are adapted to
  other input channels), checks its values and loads it strictly.

``huggingface_hub`` and ``safetensors`` are optional (``pip install 'fastmbconv[pretrained]'``)
and imported only here, when weights are loaded.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import pickle
import re
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from .model import StateDictMismatchError
from .state_dict_checks import check_state_dict

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
        while isinstance(key, str) and key.startswith(_PREFIXES):  # DDP around compile: "module._orig_mod."
            key = key[len(next(p for p in _PREFIXES if key.startswith(p))):]
        out[key] = value  # keys and values are checked where they are loaded (check_state_dict)
    return out


def _is_safetensors(path: Path) -> bool:
    """safetensors' layout, whatever the file's name: an 8-byte little-endian header length, then
    the header's JSON, inside the file."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= path.stat().st_size


def _refused_pickle(path: Path, exc: Exception) -> str:
    """What ``weights_only`` refused to unpickle, without torch's advice to unpickle it anyway."""
    text = str(exc)
    names = list(dict.fromkeys(re.findall(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)))
    if names:
        return (f"{str(path)!r} holds Python objects other than tensors ({', '.join(names)}), which are never "
                f"unpickled here; save the weights alone, with torch.save(model.state_dict(), path) or safetensors "
                f"(a training checkpoint whose extra objects are known to be harmless, e.g. argparse.Namespace, "
                f"loads inside torch.serialization.safe_globals([...those types]))")
    detail = "; ".join(dict.fromkeys(re.findall(r"unsupported operand \S+", text, re.IGNORECASE)))
    return f"could not read checkpoint {str(path)!r}: not a torch checkpoint of tensors ({detail or text[:200]})"


def is_torchvision_format(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return ("conv_stem.weight" not in state_dict
            and any(isinstance(k, str) and k.startswith("features.") for k in state_dict))


def read_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """The state dict in a local checkpoint file, in timm's key names (torchvision's are
    renamed). safetensors files (by name or by content) are read with safetensors, anything else
    with ``torch.load(weights_only=True)``; ``state_dict_ema``/``model_ema``/``state_dict``/``model``
    wrappers and ``module.``/``_orig_mod.`` prefixes are removed."""
    return read_checkpoint_and_format(path)[0]


def read_checkpoint_and_format(path: Union[str, os.PathLike]) -> tuple[dict, str]:
    """:func:`read_checkpoint`'s state dict and the key format the file had, ``"timm"`` or
    ``"torchvision"`` (the weights' BN eps depends on it: torchvision trained B5-B7 with 1e-3)."""
    from .convert import torchvision_to_timm_keys

    path = Path(os.fsdecode(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {str(path)!r} is empty")
    try:
        if path.suffix.lower() == ".safetensors" or _is_safetensors(path):
            st = _optional("safetensors.torch", f"reading {path.name}")
            checkpoint = st.load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # not a refusal: bytes that are no pickle
            raise CheckpointError(
                f"could not read checkpoint {str(path)!r}: {type(exc).__name__}: {exc}"[:600]) from exc
        raise CheckpointError(_refused_pickle(path, exc)) from None
    except Exception as exc:
        raise CheckpointError(f"could not read checkpoint {str(path)!r}: {type(exc).__name__}: {exc}"[:600]) from exc
    state_dict = _unwrap(checkpoint, path)
    if is_torchvision_format(state_dict):
        return dict(torchvision_to_timm_keys(state_dict)), "torchvision"
    return state_dict, "timm"


def hub_state_dict(cfg: Mapping, cache_dir: Optional[Union[str, os.PathLike]] = None) -> dict:
    """timm's published weights for a ``pretrained_cfg`` (its ``hf_hub_id``), from the Hugging
    Face Hub or its local cache."""
    repo = cfg.get("hf_hub_id")
    name = ".".join(filter(None, (cfg.get("architecture"), cfg.get("tag")))) or "this model"
    if not repo:
        raise CheckpointError(f"the pretrained configuration of {name} names no weights (no hf_hub_id or file): "
                              "timm publishes none for it, or the pretrained_cfg given has none; use pretrained=False, "
                              "or pass checkpoint_path=<file> or pretrained_cfg_overlay=dict(file=<file>)")
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


def load_weights(model, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                 new_classifier: bool = False) -> None:
    """Load timm-keyed weights into ``model`` as timm's ``load_pretrained`` does: a features-only
    model takes no head; with ``new_classifier`` (the caller chose the number of classes) a
    classifier of another size is left at its fresh init; 3-channel stem weights are adapted to
    the model's input channels; everything else must fit exactly, in dense, finite floating-point
    values (:class:`~fastmbconv.StateDictMismatchError` says what does not)."""
    state_dict = dict(state_dict)
    check_state_dict(state_dict, source)
    head = ("conv_head.", "bn2.", "classifier.")
    file_classifier = state_dict.get("classifier.weight")
    if model.features_only:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    elif not isinstance(model.classifier, torch.nn.Linear):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    elif (file_classifier is not None and file_classifier.ndim == 2
          and file_classifier.shape[1] == model.classifier.in_features
          and file_classifier.shape[0] != model.classifier.out_features):
        if not new_classifier:
            raise StateDictMismatchError(
                f"{source} has a classifier of {file_classifier.shape[0]} classes, this model one of "
                f"{model.classifier.out_features}: pass num_classes={file_classifier.shape[0]} to load it, or the "
                f"number of classes you want to start a fresh classifier")
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        state_dict.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
    stem = state_dict.get("conv_stem.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 3 != model.in_chans:  # timm adapts RGB weights only
        state_dict["conv_stem.weight"] = adapt_input_conv(stem, model.in_chans)
    try:
        model.load_state_dict(state_dict, strict=True)
    except StateDictMismatchError as exc:
        raise StateDictMismatchError(f"{source} does not fit this {getattr(model, 'variant', 'EfficientNet')}:\n"
                                     f"{exc}") from None
