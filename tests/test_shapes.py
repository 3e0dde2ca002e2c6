"""The layer walk: every layer of a model with the shapes it sees."""
import torch

import fastmbconv as fm
from fastmbconv.builders import model_structure
from fastmbconv.shapes import block_shapes, walk


def test_block_shapes_follow_the_config():
    shapes = block_shapes(model_structure("b0"), 224, 224)
    assert len(shapes) == 16
    first, last = shapes[0], shapes[-1]
    assert (first.mid_channels, first.height, first.has_expand) == (32, 112, False)
    assert (last.in_channels, last.mid_channels, last.out_channels, last.out_height) == (192, 1152, 320, 7)
    b4 = block_shapes(model_structure("b4"), 380, 380)
    assert len(b4) == 32 and b4[0].height == 190
    assert sum(s.stride == 2 for s in b4) == 4


def test_walk_has_stem_blocks_and_head_with_their_sizes():
    layers = walk(model_structure("b0"), 33, 47)
    assert [layer.kind for layer in layers] == ["stem"] + ["block"] * 16 + ["head"]
    stem, head = layers[0], layers[-1]
    assert (stem.out_height, stem.out_width) == (17, 24) and (head.height, head.width) == (2, 2)
    for before, after in zip(layers[1:-2], layers[2:-1]):  # each block reads what the last wrote
        assert (after.height, after.width, after.in_channels) == (before.out_height, before.out_width,
                                                                before.out_channels)
    assert [(s.stage, s.index) for s in layers if s.kind == "block"][:4] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    with torch.device("meta"):
        backbone = fm.efficientnet_b0(features_only=True)
    assert walk(backbone, 64, 64)[-1].kind == "block"  # no head without one


def test_same_padding_is_per_axis_at_a_size_whose_sides_differ_in_parity():
    """TF "SAME" pads a stride-2 layer by the parity of each side: at 32 x 33 the stem pads
    (top, bottom, left, right) = (0, 1, 1, 1), and so does the first stride-2 block (16 x 17)."""
    layers = {layer.name: layer for layer in walk(model_structure("tf_efficientnet_b0"), 32, 33)}
    assert layers["conv_stem"].padding == (0, 1, 1, 1)
    assert (layers["blocks.1.0"].height, layers["blocks.1.0"].width) == (16, 17)
    assert layers["blocks.1.0"].padding == (0, 1, 1, 1)
    assert layers["blocks.0.0"].padding == (1, 1, 1, 1)  # stride 1
    assert walk(model_structure("efficientnet_b0"), 32, 33)[0].padding == (1, 1, 1, 1)  # symmetric
