"""Triton kernels of fastmbconv, installed as ``fastmbconv.kernels``.

One op per module: the ``@triton.jit`` kernel, its launcher, the torch-facing custom op and a
pure-torch ``*_ref`` twin. This package imports only torch and triton, and triton only when an
op module is first used (names below resolve lazily), so importing it stays cheap. An op's name
is its module (``fastmbconv.kernels.dwconv_bn_act.dwconv_bn_act`` is the function); the
``*_ref`` twins, ``squeeze_excite_gate``, the ``choose_*_impl`` functions and the launch tools
are also exported by name.

- :mod:`.stem_conv_bn_act`: the stem conv + folded BN + activation, from the image as it comes;
- :mod:`.dwconv_bn_act`: depthwise kxk + folded BN + activation, SE partial sums, ragged batches
  (taps on the tensor cores in fp16/bf16);
- :mod:`.affine_act_pool`: BN + activation + SE pool sums in place, the epilogue of the depthwise
  conv on cuDNN (``dwconv_bn_act(..., impl="torch")``, chosen by ``choose_depthwise_impl``);
- :mod:`.expand_dwconv`: the expand 1x1 and the depthwise conv as one kernel (no expanded tensor),
  with its tiles per layer in :mod:`._expand_dw_tiles`;
- :mod:`.squeeze_excite`: the SE gate from those partial sums, one launch per batch;
- :mod:`.pointwise_gated`: 1x1 conv GEMM with SE-gate prologue and bias/act/residual/pool epilogue;
- :mod:`.testing`: the tolerance rule and the memory fences the tests use;
- :mod:`._autotune`: ``triton.autotune`` with its picks kept on disk (a new process reuses them);
- :mod:`._launch`: every launch goes through it: counting (``count_launches``, which tests use to
  prove kernels ran), recording without launching (``record_launches``, for the kernel report),
  one autotune config forced (``forced_config``, for the tests of every config), one lock
  around autotuned launches (an autotuner is not thread-safe), the autotuner's picks kept per
  kind of GPU.
"""
from __future__ import annotations

import importlib

#: The public submodules: the ops and ``testing``. ``fastmbconv.kernels.dwconv_bn_act`` is always
#: the module (the op's function is ``fastmbconv.kernels.dwconv_bn_act.dwconv_bn_act``): importing
#: a submodule makes its name an attribute of the package, so a function exported under the same
#: name would turn into the module once anything imported it.
SUBMODULES = ("stem_conv_bn_act", "dwconv_bn_act", "affine_act_pool", "expand_dwconv", "squeeze_excite",
              "pointwise_gated", "testing")

#: Functions exported by name, each from its module.
_EXPORTS = {
    "stem_conv_bn_act_ref": "stem_conv_bn_act",
    "dwconv_bn_act_ref": "dwconv_bn_act",
    "choose_depthwise_impl": "dwconv_bn_act",
    "affine_act_pool_ref": "affine_act_pool",
    "squeeze_excite_gate": "squeeze_excite",
    "squeeze_excite_gate_ref": "squeeze_excite",
    "pointwise_gated_ref": "pointwise_gated",
    "choose_pointwise_impl": "pointwise_gated",
    "count_launches": "_launch",
    "launch_counts": "_launch",
    "record_launch": "_launch",
    "record_launches": "_launch",
    "layer_scope": "_launch",
    "forced_config": "_launch",
}

__all__ = sorted((*SUBMODULES, *_EXPORTS))


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
