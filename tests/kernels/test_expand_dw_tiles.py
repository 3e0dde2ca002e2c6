"""The expand + depthwise kernel's launch choices (kernels/_expand_dw_tiles.py): channel blocks,
tiles, halo products, the taps group and the bias columns, for the shapes B0-B7 give on a GPU.
Pure Python: nothing is launched."""
import pytest
import torch

from fastmbconv.kernels import _expand_dw_tiles as tiles


def test_bias_columns_rule():
    """Columns where they fit the last step or their own step adds at most an eighth (B0's 16
    input channels: half); else the accumulator (B0's 192 channels in whole steps of 32)."""
    for C_in, block_k, want in [(24, 32, 2), (40, 32, 2), (80, 32, 2), (30, 32, 2), (31, 32, 2),
                                (16, 16, 2), (64, 64, 2), (96, 32, 2), (192, 32, 0), (128, 64, 0), (136, 16, 2), (144, 16, 0)]:
        assert tiles.bias_columns(C_in, block_k, torch.float16) == want, (C_in, block_k)
        assert tiles.bias_columns(C_in, block_k, torch.float32) == 0


def test_channel_block_choice(monkeypatch):
    """On a GPU: 64 expanded channels per item for 3x3 kernels where the last block wastes little
    and a tile of at most 64 slots fits (B0's 240 at stride 2, its 1152 from 192), 32 where 64
    would leave a quarter idle (B0's 96) or where wider tiles pay more (B0's 144 at 56x56: 8x14
    tiles of 112 pixels); 5x5 kernels take 64 only from at most 64 input channels (B0's 2.x; its
    4.x and 5.x are bound by tensor-core work); 32 where 64 spills: fp32, 3x3 inputs past 192
    channels. 64-channel items have at most 64 pixel slots (128 spill)."""
    monkeypatch.setattr(tiles, "interpreting", lambda: False)
    HALF = torch.float16
    assert tiles.blocks_for(56, 56, 24, 96, 3, 1, HALF)[2] == 32
    assert tiles.blocks_for(56, 56, 24, 144, 3, 1, HALF) == (8, 14, 32, 32)
    assert tiles.blocks_for(14, 14, 40, 240, 3, 2, HALF) == (7, 7, 64, 32)
    assert tiles.blocks_for(28, 28, 40, 240, 3, 2, HALF)[2] == 64
    assert tiles.blocks_for(7, 7, 192, 1152, 3, 1, HALF) == (7, 7, 64, 64)
    assert tiles.blocks_for(28, 28, 24, 144, 5, 2, HALF)[2] == 64
    assert tiles.blocks_for(28, 28, 40, 240, 5, 1, HALF)[2] == 64
    assert tiles.blocks_for(14, 14, 112, 672, 5, 1, HALF)[2] == 32
    assert tiles.blocks_for(7, 7, 192, 1152, 5, 1, HALF)[2] == 32
    assert tiles.blocks_for(15, 15, 304, 1824, 3, 1, HALF)[2] == 32
    assert tiles.blocks_for(56, 56, 24, 144, 3, 1, torch.float32)[2] == 32
    # fp32's FMA products take 16-channel expand steps (wider ones spill in B5-B7)
    assert [tiles.blocks_for(38, 38, c_in, 6 * c_in, 3, 1, torch.float32)[3] for c_in in (24, 64, 160)] == [16] * 3
    assert tiles.blocks_for(38, 38, 160, 960, 3, 1, HALF)[3] == 32
    for h, c_in, c in [(56, 24, 144), (17, 88, 528), (19, 96, 576), (14, 80, 480), (33, 48, 288)]:
        th, tw, bc, _ = tiles.blocks_for(h, h, c_in, c, 3, 1, HALF)
        assert bc == 32 or tiles.pixel_slots(th, tw) <= 64, (h, th, tw)


def test_taps_group_keeps_two_programs_per_sm(monkeypatch):
    """The windows loaded before their products: 9 where they and the kept weights fit half an
    SM's shared memory, fewer where not (B0's 2.1: 25 taps of 64 channels; 6.0: 192 input
    channels of 64); never an estimate past the budget while a group has more than one window;
    FMA taps (fp32) keep their windows in registers."""
    for split in (False, True):  # triton 3.9, 3.6 (the taps' blocks once per batch: B4's 6.0 with 3.6)
        monkeypatch.setattr(tiles, "TAPS_WARPS_ON_BATCH", split)
        assert tiles.taps_group(64, 64, 32, 40, 5, True) == 4
        assert tiles.taps_group(64, 64, 64, 192, 3, True) == 4
        assert tiles.taps_group(128, 32, 32, 80, 3, True) == 9
        assert tiles.taps_group(64, 64, 32, 40, 5, False) == 9
    assert tiles.taps_group(128, 32, 32, 272, 3, True) == 6  # 3.6: 9 taps x 4 batches of 16 x 16 kept
    monkeypatch.setattr(tiles, "TAPS_WARPS_ON_BATCH", False)
    assert tiles.taps_group(128, 32, 32, 272, 3, True) == 7
    for pixels, bc, bk, c_in, k in [(64, 64, 32, 40, 5), (128, 32, 32, 640, 3), (64, 32, 32, 384, 5),
                                     (128, 32, 64, 640, 3), (32, 64, 32, 24, 5)]:
        g = tiles.taps_group(pixels, bc, bk, c_in, k, True)
        kept = (k * k * bc * 16 + 2 * -(-c_in // bk) * bk * bc) * 2
        assert 1 <= g <= 9 and (g == 1 or kept + g * pixels * bc * 2 <= tiles.SHARED_BUDGET), (pixels, bc, c_in, g)
        assert g == 9 or kept + (g + 1) * pixels * bc * 2 > tiles.SHARED_BUDGET
    assert 2 * (tiles.SHARED_BUDGET + 1024) <= 228 * 1024
    assert [tiles.taps_split(64, bc, True) for bc in (16, 32, 64)] == [1, 1, 1]
    monkeypatch.setattr(tiles, "TAPS_WARPS_ON_BATCH", True)
    assert [tiles.taps_split(64, bc, True) for bc in (16, 32, 64)] == [4, 2, 1]
    assert tiles.taps_split(32, 16, True) == 1 and tiles.taps_split(64, 32, False) == 1  # batches of 16 slots


def test_tile_choice():
    """Tiles fit the slot and halo caps and the map; they divide B0's 56x56, 28x28, 14x14 and
    7x7 maps (no pixels past the edge), and a map smaller than a tile is one tile."""
    for (h, w, k, s) in [(56, 56, 3, 1), (28, 28, 5, 2), (7, 7, 5, 1), (14, 14, 3, 2), (300, 300, 5, 1)]:
        th, tw = tiles.tile_for(h, w, k, s)
        assert th <= h and tw <= w and tiles.pixel_slots(th, tw) <= (128 if k == 3 else 64)
        assert ((th - 1) * s + k) * ((tw - 1) * s + k) <= (320 if k == 3 else 256)
    for (h, k, s) in [(56, 3, 1), (28, 5, 1), (14, 3, 2), (14, 5, 1), (7, 5, 1)]:
        th, tw = tiles.tile_for(h, h, k, s)
        assert h % th == 0 and h % tw == 0, (h, k, s, th, tw)
    assert tiles.tile_for(7, 7, 3, 1) == (7, 7)
    assert tiles.tile_for(1, 13, 5, 2) == (1, 13)


@pytest.mark.parametrize("halo", [1, 16, 17, 25, 42, 64, 81, 100, 117, 225, 320])
def test_halo_products_cover_it_with_the_fewest_pixels(halo):
    chunk, main, a, b = tiles.split_halo(halo)
    covered = main * chunk + a + b
    assert covered >= halo and chunk == tiles.CHUNK
    assert a in (0, chunk // 2) and b in (0, chunk // 4)
    # no cover with fewer pixels from whole chunks plus at most one of each tail
    best = min(m * chunk + x + y for m in range(halo // chunk + 2) for x in (0, chunk // 2) for y in (0, chunk // 4)
               if m * chunk + x + y >= halo)
    assert covered == best
    assert tiles.split_halo(100) == (64, 1, 32, 16) and tiles.split_halo(128) == (64, 2, 0, 0)
