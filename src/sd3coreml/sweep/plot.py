"""The sweep's plot: per layout and compression mode, the figures that choose a layout.

Five panels share the layout axis: the largest stage's weights (what one Neural Engine
load must hold), the lowest PSNR of any stage (fidelity), the compute ops of all its stages
(what the Neural Engine compiler is handed), the job time to build and check the layout,
and what one denoising step costs the app on a Mac (every stage loaded, run and unloaded),
each bar labelled with the layout's Neural Engine verdict. One bar per mode (and
attention, where a row's is not joint: `int8 split_heads`); a panel with nothing measured
(the step cost off a Mac) says why. A last panel sets every row's MMDiT weights against its
quality (sweep/front.py), the rows on the size-quality front joined by a line.
"""

from pathlib import Path

from sd3coreml.stages import JOINT
from sd3coreml.sweep.front import SIZE, quality

PANELS = (
    ("largest_stage_weights_mib", "largest stage weights (MiB)"),
    ("min_psnr_db", "lowest stage PSNR (dB)"),
    # What the Neural Engine compiler is given: more for an attention split per head.
    ("compute_ops", "compute ops, all stages"),
    ("build_s", "build + check job time (s)"),
    ("step_s", "app's step cost on a Mac (s), with verdict"),
)


def series(row: dict) -> str:
    """A row's bar group: its compression mode, with its attention where that is not joint."""
    attention = row.get("attention", JOINT)
    return row["mode"] if attention == JOINT else f"{row['mode']} {attention}"


def figure_of(value) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def grouped_bars(axis, rows: list[dict], column: str, layouts: list[str], modes: list[str]) -> None:
    width = 0.8 / len(modes)
    for offset, mode in enumerate(modes):
        mode_rows = {row["layout"]: row for row in rows if series(row) == mode}
        positions = [index + (offset - (len(modes) - 1) / 2) * width for index in range(len(layouts))]
        values = [figure_of(mode_rows[layout][column]) if layout in mode_rows else None for layout in layouts]
        axis.bar(positions, [value or 0.0 for value in values], width, label=mode)
        if column == "step_s":
            for position, layout, value in zip(positions, layouts, values):
                if value is not None:
                    axis.text(position, value, mode_rows[layout]["verdict"], ha="center", va="bottom", fontsize=6)
    if all(figure_of(row[column]) is None for row in rows):
        axis.text(0.5, 0.5, str(rows[0][column]), transform=axis.transAxes, ha="center", va="center")
    axis.set_xticks(range(len(layouts)), layouts, rotation=30, ha="right")


def front_panel(axis, rows: list[dict], modes: list[str]) -> None:
    for mode in modes:
        points = [(row[SIZE], quality(row)) for row in rows if series(row) == mode and quality(row) is not None]
        axis.scatter([x for x, _ in points], [y for _, y in points], label=mode, s=18)
    front = sorted((row[SIZE], quality(row)) for row in rows if row.get("on_front") == "yes")
    axis.plot([x for x, _ in front], [y for _, y in front], color="black", linewidth=0.8, label="front")
    measured = any(isinstance(row.get("end_to_end_db"), float | int) for row in rows)
    axis.set_ylabel("end-to-end final latent PSNR (dB)" if measured else "lowest stage PSNR (dB)")
    axis.set_xlabel("MMDiT weights (MiB)")
    axis.set_title("size against quality")


def plot_summary(rows: list[dict], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a build host
    import matplotlib.pyplot as plt

    from sd3coreml.atomic import written_atomically

    layouts = list(dict.fromkeys(row["layout"] for row in rows))
    modes = list(dict.fromkeys(map(series, rows)))
    figure, axes = plt.subplots(1, len(PANELS) + 1, figsize=(5 * (len(PANELS) + 1), 4.2), layout="constrained")
    front_panel(axes[-1], rows, modes)
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
