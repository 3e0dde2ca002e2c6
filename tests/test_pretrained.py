"""Models by timm's names, timm's pretrained configurations, and loading weights from local
files and from a local Hugging Face Hub cache through the real code path (no network)."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv import weights
from fastmbconv.pretrained import PRETRAINED_CFGS

from .helpers import import_or_skip, randomize_bn

X = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
# timm's values for a few names, spelled out (the whole table is compared with timm itself in
# test_configs_equal_timms when timm imports).
TIMM_VALUES = {
    "tf_efficientnet_b3": dict(tag="ns_jft_in1k", input_size=(3, 300, 300), crop_pct=0.904,
                               mean=(0.485, 0.456, 0.406), hf_hub_id="timm/tf_efficientnet_b3.ns_jft_in1k"),
    "tf_efficientnet_b3.ap_in1k": dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.904),
    "efficientnet_b3": dict(tag="ra2_in1k", input_size=(3, 288, 288), test_input_size=(3, 320, 320),
                            test_crop_pct=1.0, crop_pct=0.875, pool_size=(9, 9)),
    "efficientnet_b0.ra4_e3600_r224_in1k": dict(crop_pct=0.9, test_input_size=(3, 256, 256), mean=(0.5, 0.5, 0.5)),
    "efficientnet_b5.sw_in12k": dict(num_classes=11821, input_size=(3, 416, 416), crop_pct=0.95),
    "efficientnet_b7": dict(tag="untrained", url="", input_size=(3, 600, 600)),
}


@pytest.mark.parametrize("name", sorted(TIMM_VALUES))
def test_pretrained_cfg_values(name):
    with torch.device("meta"):
        model = fm.create_model(name)
    cfg = model.pretrained_cfg
    for key, value in TIMM_VALUES[name].items():
        assert cfg[key] == value, key
    assert cfg["interpolation"] == "bicubic" and cfg["first_conv"] == "conv_stem"
    assert model.num_classes == cfg["num_classes"]
    assert ("hf_hub_id" in cfg) == (cfg["tag"] != "untrained")


def test_names_padding_and_eps():
    with torch.device("meta"):
        tf, pt = fm.create_model("tf_efficientnet_b2"), fm.create_model("efficientnet_b2.ra_in1k")
    assert (tf.pad_mode, tf.bn_eps, pt.pad_mode, pt.bn_eps) == ("same", 1e-3, "symmetric", 1e-5)
    assert tf.variant == "tf_efficientnet_b2" and fm.count_params(tf) == fm.count_params(pt) == 9_109_994
    assert tf.drop_rate == 0.0  # timm's default (the builders keep the paper's 0.3)
    assert fm.efficientnet_b2(pad_mode="same").pretrained_cfg == tf.pretrained_cfg


def test_list_models_like_timm():
    assert fm.list_models("tf_efficientnet_b*") == [f"tf_efficientnet_b{i}" for i in range(8)]
    assert len(fm.list_models()) == 16
    assert fm.list_models("efficientnet_b0*", pretrained=True) == [
        "efficientnet_b0.ra4_e3600_r224_in1k", "efficientnet_b0.ra_in1k"]
    assert "efficientnet_b6" not in fm.list_models(pretrained=True)  # timm publishes none
    assert "efficientnet_b6.untrained" in fm.list_models("efficientnet_b6", include_tags=True)
    assert fm.list_models("*b7", exclude_filters="tf_*") == ["efficientnet_b7"]


def test_unknown_names_list_close_matches():
    with pytest.raises(fm.UnknownModelError, match="did you mean efficientnet_b7"):
        fm.create_model("efficientnet_b8")
    with pytest.raises(ValueError, match="tf_efficientnet_b3.ns_jft_in1k"):
        fm.create_model("tf_efficientnet_b3.ns_jft")
    with pytest.raises(fm.UnknownModelError, match="unknown pretrained tag"):
        fm.create_model("efficientnet_b0", pretrained_cfg="nope")


def test_builders_have_explicit_signatures():
    import inspect

    params = inspect.signature(fm.efficientnet_b3).parameters
    assert {"pretrained", "checkpoint_path", "num_classes", "pad_mode", "drop_rate", "drop_path_rate",
            "features_only", "out_indices", "global_pool"} <= set(params)
    assert params["drop_rate"].default == 0.3 and "Args:" in fm.efficientnet_b3.__doc__
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fm.create_model).parameters.values())


def test_eval_transform_reads_the_models_cfg():
    with torch.device("meta"):
        model = fm.create_model("tf_efficientnet_b3.ap_in1k")
    t = fm.eval_transform(model)
    assert t == fm.eval_transform(PRETRAINED_CFGS["tf_efficientnet_b3"]["ap_in1k"])
    assert (t.size, t.crop_pct, t.interpolation, t.mean) == ((300, 300), 0.904, "bicubic", (0.5, 0.5, 0.5))


# ---------------------------------------------------------------- weights from local files
@pytest.fixture(scope="module")
def source():
    """A B0 with non-trivial weights and BN statistics, in timm's key names."""
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet_b0(pad_mode="same"), size=X.shape[-2:]).eval()


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


def test_checkpoint_path_torch_file_wrapped_and_prefixed(source, tmp_path):
    path = tmp_path / "ckpt.pth"
    sd = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd}, path)
    model = fm.create_model("tf_efficientnet_b0", checkpoint_path=path)
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)


def test_checkpoint_path_torchvision_keys(source, tmp_path):
    from .helpers import torchvision_style_state_dict

    src = randomize_bn(fm.efficientnet_b0(), seed=1, size=X.shape[-2:]).eval()
    path = tmp_path / "tv.pth"
    torch.save(torchvision_style_state_dict(src), path)
    model = fm.create_model("efficientnet_b0", checkpoint_path=str(path))
    torch.testing.assert_close(_logits(model), _logits(src), rtol=0, atol=0)


@pytest.mark.parametrize("variant, eps", [("b0", 1e-5), ("b5", 1e-3)])
def test_torchvision_file_sets_torchvisions_bn_eps(variant, eps, tmp_path):
    """torchvision trains B5-B7 with BN eps 1e-3, B0-B4 with 1e-5: its B5 weights under timm's
    efficientnet_b5 (eps 1e-5) would compute every BN with the wrong eps."""
    from .helpers import torchvision_style_state_dict

    src = randomize_bn(fm.create_model(f"efficientnet_{variant}", bn_eps=eps), seed=2, size=(32, 32)).eval()
    tv, timm_keyed = tmp_path / "tv.pth", tmp_path / "timm.pth"
    torch.save(torchvision_style_state_dict(src), tv)
    torch.save(src.state_dict(), timm_keyed)
    loaded = [fm.create_model(f"efficientnet_{variant}", checkpoint_path=tv),
              getattr(fm, f"efficientnet_{variant}")(checkpoint_path=tv),
              fm.from_state_dict(torchvision_style_state_dict(src), key_format="torchvision")]
    for model in loaded:
        assert model.bn_eps == eps and {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {eps}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded[0].eval()(x), src(x), rtol=0, atol=0)
    assert fm.create_model(f"efficientnet_{variant}", checkpoint_path=tv, bn_eps=0.01).bn_eps == 0.01  # given: kept
    assert fm.create_model(f"efficientnet_{variant}", checkpoint_path=timm_keyed).bn_eps == 1e-5  # timm's file


def test_checkpoint_path_safetensors(source, tmp_path):
    st = import_or_skip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    st.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = fm.efficientnet_b0(pad_mode="same", checkpoint_path=path)
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)


def test_other_num_classes_in_chans_and_features_only(source, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(source.state_dict(), path)
    ten = fm.create_model("tf_efficientnet_b0", checkpoint_path=path, num_classes=10)
    assert ten.classifier.out_features == 10
    torch.testing.assert_close(ten.conv_head.weight, source.conv_head.weight)
    gray = fm.create_model("tf_efficientnet_b0", checkpoint_path=path, in_chans=1)
    torch.testing.assert_close(gray.conv_stem.weight, source.conv_stem.weight.sum(1, keepdim=True))
    five = fm.create_model("tf_efficientnet_b0", checkpoint_path=path, in_chans=5)
    torch.testing.assert_close(five.conv_stem.weight[:, 3:], source.conv_stem.weight[:, :2] * 0.6)
    backbone = fm.create_model("tf_efficientnet_b0", checkpoint_path=path, features_only=True, out_indices=(-1,))
    with torch.no_grad():
        (last,) = backbone.eval()(X)
        torch.testing.assert_close(last, source.forward_intermediates(X, [-1], intermediates_only=True)[0])


def test_corrupt_and_mismatched_files_give_clear_errors(source, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(fm.CheckpointError, match="could not read checkpoint .*bad.pth"):
        fm.create_model("efficientnet_b0", checkpoint_path=bad)
    with pytest.raises(fm.CheckpointError, match="does not exist"):
        fm.create_model("efficientnet_b0", checkpoint_path=tmp_path / "missing.pth")
    b1 = tmp_path / "b1.pth"
    torch.save(fm.efficientnet_b1().state_dict(), b1)
    with pytest.raises(fm.StateDictMismatchError, match="unexpected keys"):
        fm.create_model("efficientnet_b0", checkpoint_path=b1)
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"a": object()}}, pickled)  # weights_only refuses arbitrary objects
    with pytest.raises(fm.CheckpointError, match=r"objects other than tensors \(object\)"):
        fm.create_model("efficientnet_b0", checkpoint_path=pickled)


class _Payload:
    """Unpickling this would run ``Path.touch`` on the marker: a stand-in for any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_untrusted_contents_are_refused_by_name(source, tmp_path):
    """Code in a pickle never runs; values a model would silently cast or compute NaN from,
    a classifier of another size nobody asked for, non-RGB stem weights and keys that are not
    names are refused, each naming what is wrong; the format is read from the content."""
    marker, evil = tmp_path / "ran", tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv_stem.weight": _Payload(marker)}}, evil)
    with pytest.raises(fm.CheckpointError, match="never unpickled"):
        fm.create_model("efficientnet_b0", checkpoint_path=evil)
    assert not marker.exists()
    good = source.state_dict()

    def refused(sd, match, error=fm.StateDictMismatchError, **kw):
        path = tmp_path / "edited.pth"
        torch.save(sd, path)
        with pytest.raises(error, match=match):
            fm.create_model("tf_efficientnet_b0", checkpoint_path=path, **kw)

    refused({**good, "blocks.1.0.conv_pw.weight": good["blocks.1.0.conv_pw.weight"] * float("nan")},
            r"'blocks.1.0.conv_pw.weight' holds 1536 NaN or infinite values")
    refused({**good, "conv_stem.weight": good["conv_stem.weight"].int()}, r"'conv_stem.weight' is torch.int32")
    refused({**good, "bn1.running_var": -good["bn1.running_var"]}, r"'bn1.running_var' holds negative variances")
    refused({**good, "bn1.num_batches_tracked": torch.tensor(float("nan"))}, r"tracked' is not a finite count")
    refused({**good, "classifier.weight": good["classifier.weight"][:10],
             "classifier.bias": good["classifier.bias"][:10]},
            r"a classifier of 10 classes, this model one of 1000: pass num_classes=10")
    refused({**good, "conv_stem.weight": good["conv_stem.weight"].repeat(1, 2, 1, 1)[:, :4]},
            r"conv_stem.weight: checkpoint \(32, 4, 3, 3\) vs model \(32, 3, 3, 3\)")
    refused({1: good["bn1.bias"]}, "key 1 is a int")
    with pytest.raises(fm.CheckpointError, match="is not a regular file"):
        fm.create_model("efficientnet_b0", checkpoint_path=tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(fm.CheckpointError, match="is empty"):
        fm.create_model("efficientnet_b0", checkpoint_path=tmp_path / "empty.pth")
    for accepted in ({k: v.half() for k, v in good.items()},  # num_batches_tracked cast with the weights
                     {k: v for k, v in good.items() if not k.endswith("num_batches_tracked")},  # older files
                     {k: v.to(torch.float8_e4m3fn) if k.endswith("running_var") else v for k, v in good.items()}):
        path = tmp_path / "accepted.pth"
        torch.save(accepted, path)
        assert fm.create_model("tf_efficientnet_b0", checkpoint_path=path) is not None
    prefixed = tmp_path / "ddp_compiled.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in good.items()}, prefixed)
    assert fm.create_model("tf_efficientnet_b0", checkpoint_path=prefixed) is not None
    st = import_or_skip("safetensors.torch")
    named_pth = tmp_path / "really_safetensors.pth"
    st.save_file({k: v.contiguous() for k, v in good.items()}, str(named_pth))
    model = fm.create_model("tf_efficientnet_b0", checkpoint_path=named_pth)
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)


# ---------------------------------------------------------------- the Hub, through its cache
def _hub_cache(root, repo: str, files: dict) -> None:
    """Lay files out as huggingface_hub's cache does: refs/main names a snapshot folder."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)


@pytest.fixture
def offline_hub(monkeypatch):
    constants = import_or_skip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("file", ["model.safetensors", "pytorch_model.bin"])
def test_pretrained_from_local_hub_cache(offline_hub, source, tmp_path, file):
    if file.endswith(".safetensors"):
        st = import_or_skip("safetensors.torch")
        write = lambda p: st.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(p))  # noqa: E731
    else:
        write = lambda p: torch.save(source.state_dict(), p)  # noqa: E731
    _hub_cache(tmp_path, "timm/tf_efficientnet_b0.ap_in1k", {file: write})
    model = fm.create_model("tf_efficientnet_b0.ap_in1k", pretrained=True, cache_dir=tmp_path)
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_offline_error_says_what_was_looked_for(offline_hub, tmp_path):
    with pytest.raises(fm.CheckpointError) as err:
        fm.create_model("tf_efficientnet_b0", pretrained=True, cache_dir=tmp_path)
    msg = str(err.value)
    assert "timm/tf_efficientnet_b0.ns_jft_in1k" in msg and "model.safetensors" in msg
    assert "pytorch_model.bin" in msg and "offline mode on" in msg and "checkpoint_path" in msg
    with pytest.raises(fm.CheckpointError, match="efficientnet_b6.untrained names no weights.*publishes none"):
        fm.create_model("efficientnet_b6", pretrained=True)
    with pytest.raises(fm.CheckpointError, match="efficientnet_b0 names no weights.*pretrained_cfg given has none"):
        fm.create_model("efficientnet_b0", pretrained=True, pretrained_cfg=dict(crop_pct=0.9))


def test_pretrained_file_in_the_configuration_is_read_instead_of_the_hub(source, tmp_path, monkeypatch):
    """timm's way to pretrained weights on disk: ``pretrained_cfg_overlay=dict(file=path)``."""
    monkeypatch.setattr(weights, "hub_state_dict", lambda *a, **k: pytest.fail("the Hub was asked"))
    path = tmp_path / "local.pth"
    torch.save(source.state_dict(), path)
    model = fm.create_model("tf_efficientnet_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)
    assert model.pretrained_cfg["file"] == str(path)
    with pytest.raises(weights.CheckpointError, match="does not exist"):
        fm.create_model("tf_efficientnet_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path) + "x"))
    fresh = fm.create_model("tf_efficientnet_b0", pretrained_cfg_overlay=dict(file=str(path)))  # not pretrained
    assert not torch.equal(fresh.conv_stem.weight, source.conv_stem.weight)
    later = tmp_path / "later.pth"
    torch.save({k: v * 2 if k == "conv_stem.weight" else v for k, v in source.state_dict().items()}, later)
    both = fm.create_model("tf_efficientnet_b0", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                           checkpoint_path=later)  # a Path; the checkpoint loads after the pretrained file
    torch.testing.assert_close(both.conv_stem.weight, source.conv_stem.weight * 2, rtol=0, atol=0)
    with pytest.raises(pytest.fail.Exception, match="the Hub was asked"):  # an empty entry is none, as in timm
        fm.create_model("tf_efficientnet_b0", pretrained=True, pretrained_cfg_overlay=dict(file=""))


def test_pretrained_cfg_object_is_a_whole_configuration():
    """timm's create_model takes a ``PretrainedCfg``; anything else that is no tag or mapping is
    refused by name, not ignored."""
    class Cfg:  # the part of timm's PretrainedCfg that is read
        def to_dict(self):
            return {"input_size": (3, 256, 256), "mean": (0.5,) * 3, "std": (0.5,) * 3, "num_classes": 10}

    model = fm.create_model("efficientnet_b0", pretrained_cfg=Cfg())
    assert model.pretrained_cfg["input_size"] == (3, 256, 256) and model.num_classes == 10
    assert model.pretrained_cfg["architecture"] == "efficientnet_b0" and model.pretrained_cfg["crop_pct"] == 0.875
    with pytest.raises(TypeError, match="pretrained_cfg must be.*got int"):
        fm.create_model("efficientnet_b0", pretrained_cfg=3)
    assert fm.create_model("efficientnet_b0", pretrained_cfg={}).pretrained_cfg == fm.pretrained_cfg("efficientnet_b0")


def test_timms_pretrained_cfg_object_as_timm_reads_it():
    timm = import_or_skip("timm")
    cfg = timm.models.PretrainedCfg(input_size=(3, 256, 256), mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=10)
    ours, theirs = fm.create_model("efficientnet_b0", pretrained_cfg=cfg), timm.create_model("efficientnet_b0",
                                                                                          pretrained_cfg=cfg)
    assert ours.pretrained_cfg == theirs.pretrained_cfg and ours.num_classes == theirs.num_classes == 10
    for given in (dict(num_classes=3), dict(architecture="mine", crop_pct=0.5)):  # a dict, completed as timm does
        ours, theirs = (lib.create_model("efficientnet_b0", pretrained_cfg=given) for lib in (fm, timm))
        assert ours.pretrained_cfg == theirs.pretrained_cfg, given


def test_missing_hub_package_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(fm.CheckpointError, match=r"fastmbconv\[pretrained\].*checkpoint_path"):
        weights.hub_state_dict(fm.pretrained_cfg("efficientnet_b0"))


def _tf_b3_in_hub_cache(root):
    """A tf_efficientnet_b3 of random weights, saved where the Hub's cache under ``root`` keeps
    timm's ns_jft_in1k weights; returns it."""
    st = import_or_skip("safetensors.torch")
    torch.manual_seed(0)
    src = randomize_bn(fm.create_model("tf_efficientnet_b3"), size=300).eval()
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    _hub_cache(root, "timm/tf_efficientnet_b3.ns_jft_in1k", {"model.safetensors": lambda p: st.save_file(sd, str(p))})
    return src


@pytest.mark.slow
def test_timm_user_swap_tf_b3(offline_hub, tmp_path):
    """The issue's swap: create_model("tf_efficientnet_b3", pretrained=True) from a local Hub
    cache gives the checkpoint's logits and timm's eval preprocessing."""
    src = _tf_b3_in_hub_cache(tmp_path)
    model = fm.create_model("tf_efficientnet_b3", pretrained=True, cache_dir=tmp_path).eval()
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x), rtol=0, atol=0)
    assert fm.eval_transform(model).size == (300, 300) and fm.eval_transform(model).crop_pct == 0.904


@pytest.mark.slow
def test_timm_user_swap_tf_b3_gives_timms_logits(offline_hub, tmp_path):
    """timm's own model on the same Hub cache gives our logits and our pretrained_cfg."""
    timm = import_or_skip("timm")
    _tf_b3_in_hub_cache(tmp_path)
    model = fm.create_model("tf_efficientnet_b3", pretrained=True, cache_dir=tmp_path).eval()
    ref = timm.create_model("tf_efficientnet_b3", pretrained=True, cache_dir=tmp_path).eval()
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)
    assert ref.pretrained_cfg == model.pretrained_cfg


def test_configs_equal_timms():
    timm = import_or_skip("timm")
    for arch, tags in PRETRAINED_CFGS.items():
        for tag, cfg in tags.items():
            assert timm.models.get_pretrained_cfg(f"{arch}.{tag}").to_dict() == cfg, (arch, tag)
        assert timm.create_model(arch, pretrained_cfg_overlay={}).pretrained_cfg == fm.pretrained_cfg(arch)
    assert sorted(fm.list_models(pretrained=True)) == sorted(
        timm.list_models(["efficientnet_b[0-7]", "tf_efficientnet_b[0-7]"], pretrained=True))


def test_pool_size_rounds_up_and_generic_cfg_has_timms_defaults():
    """timm's pool_size is ceil(size / 32): 240 -> 8, 260 -> 9 (not 7, 8). A custom scale's
    generic configuration has timm's defaults at its own resolution."""
    from fastmbconv.pretrained import generic_cfg

    assert PRETRAINED_CFGS["tf_efficientnet_b1"]["ns_jft_in1k"]["pool_size"] == (8, 8)
    assert PRETRAINED_CFGS["tf_efficientnet_b2"]["ns_jft_in1k"]["pool_size"] == (9, 9)
    cfg = generic_cfg(240, num_classes=10)
    assert (cfg["input_size"], cfg["pool_size"], cfg["num_classes"]) == ((3, 240, 240), (8, 8), 10)
    assert (cfg["crop_pct"], cfg["crop_mode"], cfg["interpolation"]) == (0.875, "center", "bicubic")
    assert generic_cfg(224)["pool_size"] == (7, 7)


def test_a_backbones_cfg_drops_the_classifier_keys():
    """As timm's features_only models: no num_classes, classifier or global_pool in the cfg."""
    with torch.device("meta"):
        named = fm.create_model("tf_efficientnet_b0", features_only=True)
        custom = fm.efficientnet(0.25, 0.25, features_only=True)
    for cfg in (named.pretrained_cfg, custom.pretrained_cfg):
        assert not {"num_classes", "classifier", "global_pool"} & set(cfg)
        assert cfg["first_conv"] == "conv_stem" and cfg["input_size"][0] == 3
