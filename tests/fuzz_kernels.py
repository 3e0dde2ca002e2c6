"""Random cases for the kernels, each checked against its ``*_ref`` twin by the tests' own check.

    python -m tests.fuzz_kernels --seconds 600            # every op, until the time is up
    python -m tests.fuzz_kernels --ops expand_dwconv --cases 200 --seed 3
    python -m tests.fuzz_kernels --seed 3 --case 117      # one case again (with the same --ops)

The test files walk fixed grids; this walks random ones: odd maps from 1x1 up, channel counts
that are and are not multiples of the blocks, both kernel sizes and strides, both paddings, the
three dtypes and both depthwise weight layouts, ragged batches with random valid sizes, forced
entries of the autotune config lists, for ``expand_dwconv`` random persistent-program counts
and halo products, and for the SE gate random tile counts, reduced widths and per-image pixel
counts (0 included). Under the interpreter the ops take the block sizes a GPU launch takes (each
kernel module's ``interpreting`` is answered False for its block choice only), the memcheck of
``tests.helpers`` watches every load and store, and bf16 casts round as on a GPU. On a GPU the
same cases run on the device as they come. Case ``i`` of seed ``s`` is the same on every run.
Exit status 1 if any case failed; each failure is printed with what reproduces it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from unittest import mock

import torch

if __name__ == "__main__" and not torch.cuda.is_available():  # as the root conftest.py, before triton's import
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastmbconv.geometry import RaggedSizes, conv_padding
from fastmbconv.kernels import _expand_dw_tiles as tiles
from fastmbconv.kernels import affine_act_pool as aap
from fastmbconv.kernels import dwconv_bn_act as dw
from fastmbconv.kernels import expand_dwconv as ed
from fastmbconv.kernels import pointwise_gated as pw
from fastmbconv.kernels import squeeze_excite as se
from fastmbconv.kernels import stem_conv_bn_act as stem
from fastmbconv.kernels._launch import count_launches, forced_config
from fastmbconv.kernels._utils import dot_fp32, interpreting

from .helpers import DEVICE, bf16_casts_round_to_nearest, interpreter_memcheck
from .kernels import test_affine_act_pool as aap_tests
from .kernels import test_dwconv_bn_act as dw_tests
from .kernels import test_expand_dwconv as ed_tests
from .kernels import test_pointwise_gated as pw_tests
from .kernels import test_squeeze_excite as se_tests
from .kernels import test_stem_conv_bn_act as stem_tests
from .kernels.test_autotune_configs import kept

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PAD_MODES = ["same", "symmetric"]


def ragged_sizes(r: random.Random, N: int, H: int, W: int, k: int, stride: int, pad_mode: str):
    """(valid_hw, pad_tl) on DEVICE: one image at the full map, the others random sizes in it."""
    sizes = [(H, W)] + [(r.randint(1, H), r.randint(1, W)) for _ in range(N - 1)]
    r.shuffle(sizes)
    ragged = RaggedSizes(sizes)
    return ragged.on(DEVICE), ragged.on(DEVICE, "padding", k, stride, pad_mode)


def _ragged(r, N, H, W, k, stride, pad_mode, share=0.4) -> dict:
    if N < 2 or r.random() >= share:
        return {}
    valid_hw, pad_tl = ragged_sizes(r, N, H, W, k, stride, pad_mode)
    return {"valid_hw": valid_hw, "pad_tl": pad_tl}


def _shown(kw: dict) -> dict:
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def dwconv_case(r: random.Random):
    N, C, H, W = r.randint(1, 3), r.choice([1, 3, 8, 16, 17, 24, 40, 72, 96, 136]), r.randint(1, 23), r.randint(1, 23)
    k, stride, pad_mode, dtype = r.choice([3, 5]), r.choice([1, 2]), r.choice(PAD_MODES), r.choice(DTYPES)
    layout = "mma" if dtype != torch.float32 and r.random() < 0.5 else "conv"
    x, w, scale, shift = dw_tests.make(N, C, H, W, k, dtype, channels_last=r.random() < 0.8,
                                       seed=r.randrange(1 << 30), layout=layout)
    kw = {"with_pool": r.random() < 0.7, **_ragged(r, N, H, W, k, stride, pad_mode)}
    config = None
    if layout == "conv" and r.random() < 0.7:  # one of the configs the autotuner would try here
        tile_h, tile_w, _ = dw.blocks_for(-(-H // stride), -(-W // stride), C)
        unit = dw._unit(C)
        config = r.choice(kept(dw._dwconv_bn_act_autotuned, {"c_units": C // unit, "C_UNIT": unit,
                                                              "TILE_H": tile_h, "TILE_W": tile_w}))
    shown = dict(N=N, C=C, H=H, W=W, k=k, stride=stride, pad_mode=pad_mode, dtype=str(dtype), layout=layout,
                 config=str(config) if config else None, **_shown(kw))

    def run():
        with forced_config(dw._dwconv_bn_act_autotuned, config) if config else contextlib.nullcontext():
            dw_tests.check(x, w, scale, shift, conv_padding(H, W, k, stride, pad_mode), stride, **kw)
    return shown, run


def expand_dwconv_case(r: random.Random):
    N, C_in, C = r.randint(1, 3), r.choice([8, 16, 24, 40, 48, 80]), r.choice([16, 20, 48, 72, 96, 120, 144])
    H, W = r.randint(1, 21), r.randint(1, 21)
    k, stride, pad_mode, dtype = r.choice([3, 5]), r.choice([1, 2]), r.choice(PAD_MODES), r.choice(DTYPES)
    taps = "major" if dtype != torch.float32 and r.random() < 0.3 else "auto"
    x, params = ed_tests.make(N, C_in, C, H, W, k, dtype, seed=r.randrange(1 << 30), taps=taps)
    if r.random() < 0.5:  # taps rows padded as the fused model folds them
        params = (*params[:2], tiles.pad_taps(params[2]), *params[3:])
    kw = _ragged(r, N, H, W, k, stride, pad_mode)
    programs, chunk = r.choice([None, 1, 2, 3, 5]), r.choice([32, tiles.CHUNK])
    shown = dict(N=N, C_in=C_in, C=C, H=H, W=W, k=k, stride=stride, pad_mode=pad_mode, dtype=str(dtype), taps=taps,
                 padded_taps=params[2].shape[1] != C, programs=programs, halo_chunk=chunk, **_shown(kw))

    def run():
        with contextlib.ExitStack() as stack:
            if programs is not None:  # fewer programs than items: each walks several, reusing its slots
                stack.enter_context(mock.patch.object(ed, "persistent_programs",
                                                      lambda device, n, c_blocks: min(n, programs)))
            stack.enter_context(mock.patch.object(ed, "halo_chunks", lambda halo: tiles.split_halo(halo, chunk)))
            ed_tests.check(x, params, conv_padding(H, W, k, stride, pad_mode), stride, **kw)
    return shown, run


def pointwise_case(r: random.Random):
    N, K, O = r.randint(1, 3), r.choice([8, 16, 24, 40, 80, 112]), r.choice([8, 16, 24, 40, 96, 160])
    H, W, dtype = r.randint(1, 17), r.randint(1, 17), r.choice(DTYPES)
    x, w, bias, gate, residual = pw_tests.make(N, K, O, H, W, dtype, channels_last=r.random() < 0.8,
                                               seed=r.randrange(1 << 30))
    kw = {"act": r.choice(["identity", "silu"])}
    if r.random() < 0.25:  # the head: per-image means of the valid pixels only
        kw["pool_only"] = True
        if N > 1 and r.random() < 0.5:
            kw["valid_hw"] = ragged_sizes(r, N, H, W, 1, 1, "same")[0]
    else:
        if r.random() < 0.5:
            kw["gate"] = gate
        if r.random() < 0.4:
            kw["residual"] = residual
    config = None
    if not kw.get("pool_only") and r.random() < 0.7:
        config = r.choice(kept(pw._pointwise_gated_autotuned, {"K": K, "O": O, "HAS_GATE": "gate" in kw,
                                                                "DOT_FP32": dot_fp32(dtype)}))
    shown = dict(N=N, K=K, O=O, H=H, W=W, dtype=str(dtype), config=str(config) if config else None,
                 **{k: list(v.shape) if isinstance(v, torch.Tensor) and k != "valid_hw" else v
                    for k, v in _shown(kw).items()})

    def run():
        with forced_config(pw._pointwise_gated_autotuned, config) if config else contextlib.nullcontext():
            pw_tests.check(x, w, bias, **kw)
    return shown, run


def stem_case(r: random.Random):
    N, H, W = r.randint(1, 3), r.randint(1, 37), r.randint(1, 37)
    C_out, C_in, k = r.choice([8, 16, 24, 32, 40, 48, 64]), r.choice([1, 3, 4]), r.choice([3, 5])
    pad_mode, in_dtype, out_dtype = r.choice(PAD_MODES), r.choice(DTYPES), r.choice(DTYPES)
    x, w, bias = stem_tests.make(N, H, W, C_out, C_in, channels_last=r.random() < 0.5, seed=r.randrange(1 << 30), k=k)
    x = x.to(in_dtype)
    kw = _ragged(r, N, H, W, k, 2, pad_mode)
    shown = dict(N=N, H=H, W=W, C_out=C_out, C_in=C_in, k=k, pad_mode=pad_mode, in_dtype=str(in_dtype),
                 out_dtype=str(out_dtype), **_shown(kw))

    def run():
        stem_tests.check(x, w, bias, conv_padding(H, W, k, 2, pad_mode), out_dtype=out_dtype, **kw)
    return shown, run


def affine_act_pool_case(r: random.Random):
    N, C, H, W = r.randint(1, 3), r.choice([1, 3, 8, 16, 17, 24, 40, 72, 96, 136]), r.randint(1, 47), r.randint(1, 47)
    dtype, act, with_pool = r.choice(DTYPES), r.choice(["silu", "relu6", "identity"]), r.random() < 0.7
    channels_last = r.random() < 0.8
    y, scale, shift = aap_tests.make(N, C, H, W, dtype, channels_last=channels_last, seed=r.randrange(1 << 30))
    shown = dict(N=N, C=C, H=H, W=W, dtype=str(dtype), act=act, with_pool=with_pool, channels_last=channels_last)

    def run():
        aap_tests.check(y, scale, shift, act, with_pool)
    return shown, run


def squeeze_excite_case(r: random.Random):
    N, T, C, R = r.randint(1, 40), r.randint(1, 9), r.choice([8, 17, 24, 40, 72, 96, 136, 200, 480]), r.randint(1, 160)
    wdtype, hw = r.choice(DTYPES), r.randint(1, 400)
    args = se_tests.make(N, C, R, wdtype, seed=r.randrange(1 << 30), tiles=T)
    count = None
    if r.random() < 0.4:  # ragged: each image's own count of valid pixels (0 included)
        count = torch.tensor([r.randint(0, hw) for _ in range(N)], dtype=torch.int32, device=DEVICE)
    # sums of as many pixels as each image has, whose means spread as SiLU outputs do (up to ~8):
    # make's sums divided by a count of 1 gave means in the hundreds, where two correct bf16
    # orders of rounding differ by more than the low-precision rule's 3x allows
    pixels = (count.clamp_min(1) if count is not None else torch.full((N,), hw, device=DEVICE)).float()
    spread = r.uniform(0.1, 8.0)
    args = (args[0] * (pixels * spread / (30 * T**0.5)).view(N, *[1] * (args[0].ndim - 1)), *args[1:])
    shown = dict(N=N, T=T, C=C, R=R, wdtype=str(wdtype), hw=hw, count=count.tolist() if count is not None else None,
                 spread=round(spread, 3))

    def run():
        se_tests.check(args, wdtype, hw, count)
    return shown, run


CASES = {"dwconv_bn_act": dwconv_case, "expand_dwconv": expand_dwconv_case, "pointwise_gated": pointwise_case,
         "stem_conv_bn_act": stem_case, "affine_act_pool": affine_act_pool_case,
         "squeeze_excite_gate": squeeze_excite_case}
#: the modules whose block choices ask ``interpreting()`` (each imported the name itself)
BLOCK_CHOOSERS = (dw, pw, stem, tiles, aap, se)


@contextlib.contextmanager
def gpu_blocks():
    """Under the interpreter, the block sizes, halo products and program counts of a GPU launch
    (an H100's, as on ``meta``); the launches themselves still run through the interpreter."""
    with contextlib.ExitStack() as stack:
        if interpreting():
            for module in BLOCK_CHOOSERS:
                stack.enter_context(mock.patch.object(module, "interpreting", lambda: False))
        yield


def case(ops: list[str], seed: int, index: int):
    """(op, what the case is, a function that runs and checks it): case ``index`` of ``seed``,
    of one of ``ops``. String seeds: Python's ``random`` hashes them the same on every run."""
    r = random.Random(f"{seed}:{index}")
    op = r.choice(ops)
    shown, run = CASES[op](r)
    return op, shown, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default=",".join(CASES), help="comma-separated ops (default: all)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, default=None, help="run only this case of the seed")
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    unknown = sorted(set(ops) - set(CASES))
    if unknown:
        parser.error(f"unknown ops {unknown}; choose from {sorted(CASES)}")
    if args.case is None and args.seconds is None and args.cases is None:
        args.cases = 100
    indices = [args.case] if args.case is not None else range(args.cases if args.cases is not None else sys.maxsize)
    start, failures, ran = time.monotonic(), 0, 0
    with gpu_blocks(), bf16_casts_round_to_nearest(), count_launches() as launches:
        for index in indices:
            if args.seconds is not None and time.monotonic() - start > args.seconds:
                break
            ran += 1
            op, shown = "?", {}
            try:  # a failed check, a kernel or a case that raised: report it and go on
                op, shown, run = case(ops, args.seed, index)
                with interpreter_memcheck():
                    run()
            except Exception as error:
                failures += 1
                print(f"FAIL {op} case {index} of seed {args.seed}: {json.dumps(shown)}\n    "
                      f"{type(error).__name__}: {str(error)[:800]}\n    again: python -m tests.fuzz_kernels "
                      f"--ops {','.join(ops)} --seed {args.seed} --case {index}", flush=True)
    print(f"{ran} cases, {failures} failed, {time.monotonic() - start:.0f} s; launches {dict(launches)}; "
          f"seed {args.seed}, device {DEVICE}{' (interpreter, GPU blocks)' if interpreting() else ''}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
