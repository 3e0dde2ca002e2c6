"""The study's plots: latency vs FLOPs, throughput vs batch, and the B0 time breakdown."""
from __future__ import annotations

from pathlib import Path

from .profile import CATEGORIES
from .providers import PROVIDERS, RESNET, short_name


def resolution_label(rows) -> str:
    """What the plotted rows ran at: one size ("48x48 px"), or each model at its own."""
    sizes = sorted({r["resolution"] for r in rows})
    if len(sizes) == 1:
        return f"{sizes[0]}x{sizes[0]} px"
    return f"each model at its resolution ({sizes[0]}-{sizes[-1]} px)" if sizes else "no measured case"


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, LogLocator, FormatStrFormatter

    rows = [r for r in result["rows"] if r.get("median_s")]
    dev = result["meta"]["device"]
    paths = []

    # latency vs FLOPs, one panel per (batch, dtype), one line per provider
    panels = sorted({(r["batch"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.5), squeeze=False)
    for ax, (batch, dtype) in zip(axes[0], panels):
        for prov in PROVIDERS:
            pr = sorted((r for r in rows if r["batch"] == batch and r["dtype"] == dtype and r["provider"] == prov),
                        key=lambda r: r["gflops_per_image"])
            eff = [r for r in pr if r["model"] != RESNET]
            rn = [r for r in pr if r["model"] == RESNET]
            if not pr:
                continue
            line = None
            if eff:
                (line,) = ax.plot([r["gflops_per_image"] for r in eff], [r["median_s"] * 1e3 for r in eff],
                                  "o-", label=prov)
                for r in eff:
                    ax.annotate(short_name(r["model"]), (r["gflops_per_image"], r["median_s"] * 1e3),
                                fontsize=7, xytext=(3, 3), textcoords="offset points")
            for r in rn:
                ax.plot(r["gflops_per_image"], r["median_s"] * 1e3, "s", markersize=8,
                        color=line.get_color() if line else None, label=f"ResNet-50 {prov}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            # 1-2-5 major ticks with plain labels: a sweep often spans less than one decade.
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("GFLOP per image")
        ax.set_ylabel(f"latency per call (ms), batch {batch}")
        ax.set_title(f"batch {batch}, {dtype}, "
                     + resolution_label([r for r in rows if r["batch"] == batch and r["dtype"] == dtype]), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Latency vs FLOPs: EfficientNet B0-B7 and ResNet-50 on {dev}, {resolution_label(rows)}",
                 fontsize=10)
    fig.tight_layout()
    paths.append(out_dir / "latency_vs_flops.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # throughput vs batch
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["model"], r["provider"], r["dtype"]) for r in rows}):
        pr = sorted((r for r in rows if (r["model"], r["provider"], r["dtype"]) == key), key=lambda r: r["batch"])
        if len(pr) < 2 and len({r["batch"] for r in rows}) > 1:
            continue
        ax.plot([r["batch"] for r in pr], [r["images_per_s"] for r in pr], "o-", label=f"{short_name(key[0])} {key[1]} {key[2]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title(f"Throughput vs batch on {dev}, {resolution_label(rows)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out_dir / "throughput_vs_batch.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    # B0 breakdown: one stacked bar per profiled provider
    good = [b for b in result["breakdown"] if "rows" in b]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 1.0 * max(1, len(good))))
    for i, b in enumerate(good):
        left = 0.0
        for row in b["rows"]:
            ax.barh(i, row["ms"], left=left, label=row["category"] if i == 0 else None,
                    color=f"C{CATEGORIES.index(row['category'])}")
            if row["share"] > 0.06:
                fpb = "" if row["flop_per_byte"] is None else f"\n{row['flop_per_byte']:.1f} F/B"
                ax.text(left + row["ms"] / 2, i, f"{row['category']}{fpb}", ha="center", va="center", fontsize=7)
            left += row["ms"]
    ax.set_yticks(range(len(good)), [f"{b['provider']}\nbs{b['batch']} {b['dtype']}" for b in good])
    ax.set_xlabel("ms per forward (profiler)")
    res = resolution_label([{"resolution": b["resolution"]} for b in good if "resolution" in b])
    ax.set_title(f"EfficientNet-B0: where the time goes, FLOP/byte per category, on {dev}, {res}", fontsize=10)
    if good:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    paths.append(out_dir / "b0_breakdown.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
