"""The sweep's plot: per layout and compression mode, the figures that choose a layout.

Three panels share the layout axis: the largest stage's weights (what one Neural Engine
load must hold), the lowest PSNR of any stage (fidelity), and the job time to build and
check the layout. One bar per mode.
"""

from pathlib import Path

PANELS = (
    ("largest_stage_weights_mib", "largest stage weights (MiB)"),
    ("min_psnr_db", "lowest stage PSNR (dB)"),
    ("build_s", "build + check job time (s)"),
)


def grouped_bars(axis, rows: list[dict], column: str, layouts: list[str], modes: list[str]) -> None:
    width = 0.8 / len(modes)
    for offset, mode in enumerate(modes):
        values = {row["layout"]: row[column] for row in rows if row["mode"] == mode}
        positions = [index + (offset - (len(modes) - 1) / 2) * width for index in range(len(layouts))]
        axis.bar(positions, [values.get(layout, 0.0) for layout in layouts], width, label=mode)
    axis.set_xticks(range(len(layouts)), layouts, rotation=30, ha="right")


def plot_summary(rows: list[dict], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a build host
    import matplotlib.pyplot as plt

    from sd3coreml.atomic import written_atomically

    layouts = list(dict.fromkeys(row["layout"] for row in rows))
    modes = list(dict.fromkeys(row["mode"] for row in rows))
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4.2), layout="constrained")
    for axis, (column, label) in zip(axes, PANELS):
        grouped_bars(axis, rows, column, layouts, modes)
        axis.set_title(label)
        axis.set_xlabel("stage sizes")
    axes[0].legend(title="compression", fontsize="small")
    figure.suptitle(title)
    with written_atomically(Path(out)) as temporary:
        # No software or date stamp: the PNG depends only on the figures.
        figure.savefig(temporary, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
