"""Work items of :mod:`.expand_dwconv`: the output tile, the channel block, the halo's row pitch
and its expand products, chosen on the host per layer geometry from a small cost model (the
kernel report, ``python -m fastmbconv.kernel_report``, measures the real costs), the
persistent grid that runs them, and the taps' rows padded to whole channel blocks."""
from __future__ import annotations

import functools
import re

import torch
import triton

from ._utils import cuda_capability, cuda_index, interpreting, next_pow2, shared_limits

# Relative costs per channel, in thread instructions, for choosing a tile (the kernel report
# measures the real ones): an expanded halo element (SiLU, mask, scratch store), a depthwise tap
# (a quarter of a 4-wide load and an FMA), an output slot's epilogue, a work item's set-up, and
# what a halo pixel adds where the slot's row pitch is not a power of two (a division).
_HALO_COST, _TAP_COST, _OUT_COST, _ITEM_COST, _DIV_COST = 8.0, 1.25, 10.0, 600.0, 1.0
CHUNK = 64  # halo pixels per expand product (a warpgroup's wgmma M)
_ITEM_CHANNELS = 24  # a work item's fixed cost, in channels' worth of its per-channel work
# Triton before 3.9 lays a batched dot's warps along its batch: with fewer 16-channel groups
# than warps, each group's tap products would run on several warps at once (3.6: twice; B0's
# fused blocks model up to 26% slower in the kernel report). There the kernel splits the tile's
# pixels into a batch per warp; 3.9 spreads the warps over the pixels itself.
TAPS_WARPS_ON_BATCH = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2]) < (3, 9)


def pixel_slots(tile_h: int, tile_w: int) -> int:
    """The flat output tile's length: the tile's pixels rounded up to a power of two (at least 16)."""
    return max(16, next_pow2(tile_h * tile_w))


def halo_shape(tile_h: int, tile_w: int, kernel: int, stride: int) -> tuple[int, int]:
    """(rows, columns) of the input that a tile's windows read: its expanded halo."""
    return (tile_h - 1) * stride + kernel, (tile_w - 1) * stride + kernel


def halo_pitch(halo_w: int) -> int:
    """Slot pixels per halo row: the next power of two where that wastes at most an eighth of
    the row (a halo pixel's row and column are then a shift and a mask, where a division by an
    odd width costs ~6 integer instructions per pixel and layout: 15 -> 16, 31 -> 32), else the
    width itself (11 stays 11: 16 would expand 45% more pixels). Pixels past the width are
    zeros that no tap reads."""
    pow2 = next_pow2(halo_w)
    return pow2 if pow2 * 8 <= halo_w * 9 else halo_w


def split_halo(halo: int, chunk: int = CHUNK) -> tuple[int, int, int, int]:
    """(chunk, main_chunks, tail_a, tail_b): the halo's expand products, ``main_chunks`` of
    ``chunk`` pixels then at most one of ``chunk // 2`` (``tail_a``) and one of ``chunk // 4``
    (``tail_b``), each at least 16 (an MMA's M), covering the halo with the fewest pixels past
    it (100 pixels: 64 + 32 + 16, not 2 x 64)."""
    main, rest = divmod(halo, chunk)
    if rest == 0:
        return chunk, main, 0, 0
    options = [(chunk, 0, 0)]  # one more whole chunk
    for a in (chunk // 2, 0):
        for b in (chunk // 4, 0):
            if a + b >= rest and (a == 0 or a >= 16) and (b == 0 or b >= 16):
                options.append((0, a, b))
    whole, a, b = min(options, key=lambda o: (sum(o), (o[1] > 0) + (o[2] > 0)))
    return chunk, main + (whole > 0), a, b


def halo_chunks(halo: int) -> tuple[int, int, int, int]:
    """:func:`split_halo` of :data:`CHUNK` on a GPU; the whole halo as one product under the
    interpreter (~30 ms per program: few, large blocks)."""
    return (max(16, next_pow2(halo)), 1, 0, 0) if interpreting() else split_halo(halo)


@functools.lru_cache(maxsize=None)
def _tile_search(H_out: int, W_out: int, kernel: int, stride: int, wide_block: bool) -> tuple[float, tuple[int, int]]:
    """(cost per channel, (tile_h, tile_w)) of the cheapest tile, see :func:`tile_for`. Cached:
    every launch asks, and the search tries up to 512 tiles."""
    max_slots = 128 if kernel == 3 else 64
    min_slots = 32 if H_out * W_out >= 32 else 16
    best = None
    for th in range(1, min(H_out, 16) + 1):  # taller tiles (B1's 20x6 at 60x60) reserve a stack frame on sm_90
        for tw in range(1, min(W_out, 32) + 1):
            slots = pixel_slots(th, tw)
            if not min_slots <= slots <= max_slots:
                continue
            if wide_block and slots > 64:
                continue  # 64-channel items of 128 slots spill on sm_90 (B0's 14x14 and 56x56 maps)
            halo_h, halo_w = halo_shape(th, tw, kernel, stride)
            pitch = halo_pitch(halo_w)
            halo = halo_h * pitch
            if slots > 64 and (pitch & (pitch - 1) or halo > 160):
                continue  # 128 slots beside a division per halo pixel or a fourth product: spills (triton 3.6)
            if halo > (256 if kernel == 5 else 320):  # registers, and the slot size
                continue
            chunk, main, a, b = split_halo(halo)
            tiles = -(-H_out // th) * -(-W_out // tw)
            halo_cost = _HALO_COST + (_DIV_COST if pitch & (pitch - 1) else 0.0)
            cost = tiles * ((main * chunk + a + b) * halo_cost + slots * (kernel * kernel * _TAP_COST + _OUT_COST)
                            + _ITEM_COST)
            key = (cost, -tw, -th)  # ties: wider (contiguous rows), then taller
            if best is None or key < best[0]:
                best = (key, (th, tw))
    return (best[0][0], best[1]) if best else (0.0, (min(H_out, 4), min(W_out, 4)))


def tile_for(H_out: int, W_out: int, kernel: int, stride: int, wide_block: bool = False) -> tuple[int, int]:
    """The output tile (any height and width) that costs the least over the map: big tiles
    share their halo rows and columns, tiles that divide the map waste no pixels past its
    edge, and the halo is computed in whole products (:func:`split_halo`) of rows of a
    power-of-two pitch where that wastes little (:func:`halo_pitch`).

    Limits: at most 16 x 32 pixels; at most 64 pixel slots for 5x5 kernels (the 25 taps' loads
    in flight need the registers) and 128 for 3x3, where 128 also needs a power-of-two pitch
    and at most 160 halo pixels; at least 32 slots where the map has that many; halos up to
    320 pixels with their pitch (256 for 5x5). ``wide_block``: for 64-channel items, at most
    64 slots (more spill on sm_90)."""
    return _tile_search(H_out, W_out, kernel, stride, wide_block)[1]


def blocks_for(H_out: int, W_out: int, C_in: int, C: int, kernel: int, stride: int,
               dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(TILE_H, TILE_W, BLOCK_C, BLOCK_K): output pixels and expanded channels per work item,
    input channels per expand step: 64 only for 3x3 kernels over whole steps of 64, else 32
    (a partial last step of 64, or the 25 taps' loads beside one, spill on sm_90: B2's 88 and
    B7's 160 input channels in python -m fastmbconv.kernel_report). fp32 steps are 16 channels:
    its products run as FMAs, whose wider operands spilled up to 1960 B in B5-B7 and modelled
    slower in every B0 and B7 block."""
    block_k = min(64 if kernel == 3 and C_in % 64 == 0 else 32, max(16, next_pow2(C_in)))
    if dtype == torch.float32:
        block_k = 16
    if interpreting():  # ~30 ms per program: few, large items (the halo's product <= 2^17 elements)
        halo_h, halo_w = halo_shape(H_out, W_out, kernel, stride)
        halo = halo_h * halo_pitch(halo_w)
        block_c = max(16, min(next_pow2(C), 512))
        while block_c > 128 and next_pow2(halo) * block_c > 2**17:
            block_c //= 2
        return H_out, W_out, block_c, max(16, min(next_pow2(C_in), 128))
    # 64 expanded channels per item halve the per-item work per output (set-up, the SE sums'
    # reduction) where few channels are masked off. Only for fp16/bf16, and 3x3 kernels of at
    # most 192 input channels or 5x5 ones of at most 64 (B0's 2.x): fp32 and wider 3x3 inputs
    # spill at 64 on sm_90 (B5's and B7's last stage), and wider 5x5 blocks (B0's 4.x, 5.x) are
    # bound by their tensor-core work, which 64-channel items' narrower tiles add to.
    # The tile and the channel block are chosen together (a 64-channel item narrows the tiles).
    options = [32]
    if dtype != torch.float32 and (kernel == 3 and C_in <= 192 or C_in <= 64):
        options.append(64)
    best = None
    for bc in options:
        cost, tile = _tile_search(H_out, W_out, kernel, stride, bc == 64)
        key = (cost * -(-C // bc) * (bc + _ITEM_CHANNELS), tile, bc)
        best = key if best is None or key < best else best
    _, (tile_h, tile_w), block_c = best
    return tile_h, tile_w, block_c, block_k


def bias_columns(C_in: int, block_k: int, dtype: torch.dtype) -> int:
    """Columns of the expand's product that carry its bias (see _expand_dw_halo.expand_chunk):
    2 for fp16/bf16 where they fit the last K step or cost a step of 16 that adds at most an
    eighth to the product; else 0, and the bias starts the accumulator (fp32's FMA products,
    where a column costs as much as a channel; B0's 192 input channels in whole steps, where
    the tensor cores bound the layer)."""
    if dtype == torch.float32:
        return 0
    room = (C_in - 1) % block_k + 1 + 2 <= block_k
    return 2 if room or 16 * 8 > C_in else 0


def persistent_programs(device: torch.device, tiles: int, c_blocks: int) -> int:
    """Programs per channel block (each program keeps one block's weights and walks the
    ``tiles`` of the whole batch): about two programs per SM in all (the registers of two 4-warp
    programs fill an SM, and every program owns two scratch slots); one per tile under the
    interpreter. On ``meta`` (the kernel report) an H100's 132 SMs."""
    if interpreting():
        return tiles
    sms = _cuda_sm_count(cuda_index(device)) if device.type == "cuda" else 132
    return max(1, min(tiles, 2 * sms // c_blocks))


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    """Asked once per device: every expand_dwconv launch needs it."""
    return torch.cuda.get_device_properties(index).multi_processor_count


# shared memory that the estimate in taps_group leaves out: the expand's operand staging (up to
# 7 KiB in B0-B7); and the 1 KiB the driver reserves per program
STAGING, RESERVED = 8 * 1024, 1024


def shared_budget(device: torch.device) -> int:
    """Shared memory a fused program may keep so that two share an SM (what
    :func:`persistent_programs` launches): 107,520 B on an H100."""
    per_sm, per_program = shared_limits(device)
    return min(per_sm // 2 - RESERVED, per_program) - STAGING


SHARED_BUDGET = shared_budget(torch.device("meta"))
TAPS_GROUP_MAX = 9


def taps_split(pixels: int, block_c: int, mma: bool) -> int:
    """Pixel batches per 16-channel group of the tensor-core taps (``SPLIT`` in the kernel):
    ``4 // groups`` where :data:`TAPS_WARPS_ON_BATCH` asks for a batch per warp and each batch
    keeps 16 slots, else 1 (also for FMA taps)."""
    groups = block_c // 16
    return 4 // groups if mma and TAPS_WARPS_ON_BATCH and groups < 4 and pixels // (4 // groups) >= 16 else 1


def kept_shared(block_c: int, block_k: int, C_in: int, kernel: int, pixels: int) -> int:
    """Bytes of shared memory a tensor-core program keeps: the taps' diagonal blocks (one per
    batch, :func:`taps_split`) and the expand's B tiles (twice: the halo's main and tail
    products lay them out differently)."""
    batches = block_c // 16 * taps_split(pixels, block_c, True)
    return (kernel * kernel * batches * 256 + 2 * -(-C_in // block_k) * block_k * block_c) * 2


def taps_group(pixels: int, block_c: int, block_k: int, C_in: int, kernel: int, mma: bool,
               budget: int = SHARED_BUDGET) -> int:
    """Depthwise windows an item loads before their products (they share barriers): up to 9.
    With tensor cores each window of a group passes through shared memory on its way to the
    dot at the same time (``pixels`` x ``block_c`` halves), beside what a program keeps there
    (:func:`kept_shared`). The group stops where that would exceed ``budget`` (see
    :func:`shared_budget`; B0's 2.1 and 6.0 on an H100: 4 windows; 9 took 138 KiB, one program
    per SM). FMA taps (fp32) keep their windows in registers."""
    if not mma:
        return TAPS_GROUP_MAX
    kept = kept_shared(block_c, block_k, C_in, kernel, pixels)
    return max(1, min(TAPS_GROUP_MAX, (budget - kept) // (pixels * block_c * 2)))


def fits_one_program(H_out: int, W_out: int, C_in: int, C: int, kernel: int, stride: int, dtype: torch.dtype,
                     device: torch.device) -> bool:
    """Whether a program of the fused kernel, with one window per group, fits the shared memory
    one program may have on ``device``: B0-B7's all on an H100, and at 99 KiB per program
    (sm_86, sm_89; smaller groups there) all but some of B7's. A model of the compiler's
    allocation, above sm_90's measured one in every B0 and B3 block. Not before sm_80 (a T4's
    64 KiB): for the same tiles Triton's sm_75 code keeps about twice sm_86's (82 KiB against
    41 KiB in B0's 5.1), past the model and the GPU in 8 of B0's blocks with triton 3.9. fp32's
    FMA taps keep little there, and the interpreter has no shared memory."""
    if dtype == torch.float32 or interpreting():
        return True
    if device.type == "cuda" and cuda_capability(cuda_index(device)) < (8, 0):
        return False
    tile_h, tile_w, block_c, block_k = blocks_for(H_out, W_out, C_in, C, kernel, stride, dtype)
    pixels = pixel_slots(tile_h, tile_w)
    need = kept_shared(block_c, block_k, C_in, kernel, pixels) + pixels * block_c * 2 + STAGING
    return need <= shared_limits(device)[1]


TAPS_ALIGN = 64  # pad_taps: channels per taps row, a multiple of every channel block


def pad_taps(w_dw: torch.Tensor) -> torch.Tensor:
    """Depthwise weights (k*k, C) or (k*k, C, 16) with each tap's rows zero-padded to a multiple
    of :data:`TAPS_ALIGN` channels: the kernel then loads every channel block's taps without a
    mask, at constant offsets (the fused model pads once, when it folds)."""
    kk, C = w_dw.shape[:2]
    out = w_dw.new_zeros((kk, -(-C // TAPS_ALIGN) * TAPS_ALIGN, *w_dw.shape[2:]))
    out[:, :C] = w_dw
    return out
