"""timm's feature-extraction conventions, so detector and segmentation code written against timm
backbones runs unchanged: :class:`FeatureInfo`, index selection (:func:`take_indices`) and the
stage numbering.

Stage numbers follow timm: the stem is stage 0 and ``blocks[i]`` is stage ``i + 1``, so
EfficientNet's five feature maps (strides 2, 4, 8, 16, 32) are stages 1, 2, 3, 5, 7. The
executors count ``blocks`` from 0 with the stem at :data:`fastmbconv.plan.STEM` (-1):
:func:`plan_stage` converts.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Union

from .config import StageConfig

Indices = Union[int, Sequence[int], None]


def take_indices(count: int, indices: Indices, what: str = "feature index") -> list[int]:
    """Absolute positions among ``count`` features, as timm selects them: ``None`` takes all,
    an int ``n`` the last ``n``, a sequence each of its entries (negative ones count from the
    end). Raises ValueError naming the valid range."""
    if indices is None:
        indices = count
    if isinstance(indices, bool):
        raise TypeError(f"{what} must be an int or a sequence of ints, got {indices!r}")
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"{what}: last-n ({indices}) is out of range (1 to {count})")
        return list(range(count - indices, count))
    taken = []
    for i in indices:
        idx = count + i if i < 0 else i
        if not 0 <= idx < count:
            raise ValueError(f"{what} {i} is out of range (-{count} to {count - 1})")
        taken.append(idx)
    if not taken:
        raise ValueError(f"{what}: no indices given")
    return taken


def out_indices_tuple(out_indices: Union[int, Sequence[int]]) -> tuple[int, ...]:
    """timm's normalisation of ``out_indices``: an int ``n`` means the last ``n`` features."""
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        return tuple(range(-out_indices, 0))
    return tuple(out_indices)


def plan_stage(timm_stage: int) -> int:
    """The executors' stage index (:data:`fastmbconv.plan.STEM` = -1 for the stem) of a timm
    stage number (stem = 0)."""
    return timm_stage - 1


def stage_feature_dicts(stages: Sequence[StageConfig]) -> list[dict]:
    """timm's ``feature_info`` dicts for EfficientNet: the last stage at each reduction (the
    stem's map is not one of them, in timm neither)."""
    dicts, reduction = [], 2
    for i, stage in enumerate(stages):
        if i > 0:
            reduction *= stage.stride
        last_at_reduction = i + 1 == len(stages) or stages[i + 1].stride > 1
        if last_at_reduction:
            dicts.append({"stage": i + 1, "reduction": reduction, "module": f"blocks.{i}",
                          "num_chs": stage.out_channels})
    return dicts


class FeatureInfo:
    """What a backbone's feature maps are, as timm describes them.

    ``info`` holds every feature (dicts with ``num_chs``, ``reduction``, ``module``, ``stage``,
    ``index``); ``out_indices`` picks the ones the model returns. ``channels()``,
    ``reduction()`` and ``module_name()`` answer for the returned features (or for ``idx``).
    Indexing and ``len`` see every feature, as in timm.
    """

    def __init__(self, info: Sequence[dict], out_indices: Union[int, Sequence[int]]):
        info = [dict(d) for d in info]
        for i, d in enumerate(info):
            d.setdefault("index", i)
        self.info = info
        self.out_indices = out_indices_tuple(out_indices)
        take_indices(len(info), self.out_indices, "out_indices")  # validates

    def from_other(self, out_indices: Union[int, Sequence[int]]) -> "FeatureInfo":
        return FeatureInfo(copy.deepcopy(self.info), out_indices)

    def get(self, key: str, idx: Optional[Union[int, Sequence[int]]] = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Optional[Sequence[str]] = None, idx: Optional[Union[int, Sequence[int]]] = None):
        def pick(i):
            return self.info[i] if keys is None else {k: self.info[i][k] for k in keys}

        if idx is None:
            return [pick(i) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(i) for i in idx]
        return pick(idx)

    def channels(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self.get("reduction", idx)

    def module_name(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self.get("module", idx)

    def plan_stages(self) -> tuple[int, ...]:
        """The executors' stage indices of the returned features, in network order (the order
        the maps come out in, as in timm's EfficientNet backbones)."""
        positions = sorted(set(take_indices(len(self.info), self.out_indices, "out_indices")))
        return tuple(plan_stage(self.info[i]["stage"]) for i in positions)

    def __getitem__(self, item):
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, reduction={self.reduction()})"
