"""``python -m fastmbconv``: the B0-B7 table of resolution, params and FLOPs, or the model names
and their pretrained configurations."""
from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastmbconv",
        description="fastmbconv, a kernel-accelerated EfficientNet. With no option: the B0-B7 table of "
                    "resolution, parameters and FLOPs (counted on the meta device).",
        epilog="The study: python -m fastmbconv.study --help")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", nargs="?", const="", metavar="PATTERN",
                      help="list model names (timm's), optionally matching a wildcard, e.g. 'tf_*'")
    what.add_argument("--pretrained", nargs="?", const="", metavar="PATTERN",
                      help="list name.tag for every pretrained configuration with published weights")
    what.add_argument("--cfg", metavar="NAME", help="print a model's pretrained_cfg, e.g. tf_efficientnet_b3.ns_jft_in1k")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from . import builders

    if a.list is not None:
        print("\n".join(builders.list_models(a.list)))
    elif a.pretrained is not None:
        print("\n".join(builders.list_models(a.pretrained, pretrained=True)))
    elif a.cfg:
        from .pretrained import pretrained_cfg

        try:
            arch, tag = builders.split_model_name(a.cfg)
        except ValueError as exc:
            raise SystemExit(f"python -m fastmbconv: error: {exc}") from None
        for key, value in pretrained_cfg(arch, tag).items():
            print(f"{key}: {value}")
    else:
        from .flops import format_table, model_table

        print(format_table(model_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
