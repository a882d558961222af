"""Training curves of one or more runs in one PNG.

    python scripts/plot_metrics.py ../checkpoints/lr2e-5_bs96_ep16_val0.1_seed0 -o curves.png
    python scripts/plot_metrics.py ../checkpoints/*seed* -o seeds.png     # overlaid
    python scripts/plot_metrics.py ../checkpoints/protocol_paper -o splits.png  # its seed<k> runs

Panels: train loss; SRCC (train solid, val dashed, a star at the best val
epoch); PLCC (val dashed). A run trained with --test_json also gets a diamond
in the SRCC and PLCC panels: best_model.pkl's test score, drawn at the epoch
it comes from. Each run keeps one colour in every panel; the legend names runs
by folder name, a protocol's splits as <protocol>/seed<k> (as compare_runs.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from hyperiqa.atomic import overwritten_input, write_atomic
from hyperiqa.run_summary import NO_SPLITS, RunFolderError, RunSummary, load_run, run_folders

PROG = "plot_metrics"


def run_labels(runs: list[RunSummary]) -> list[str]:
    """Run names; where two runs share one (e.g. two machines' checkpoints), each
    prefixed with the folder that holds it (a protocol's split: the protocol folder's)."""
    names = [run.name for run in runs]
    labels = []
    for run in runs:
        if names.count(run.name) > 1:
            # The name covers the last 1 (a run) or 2 (protocol/seed<k>) path parts.
            holder = run.path.absolute().parents[run.name.count("/")]
            labels.append(f"{holder.name}/{run.name}")
        else:
            labels.append(run.name)
    return labels


# The test score: a diamond, hollow so it never hides the val curve's best star below it.
TEST_MARKER = {"marker": "D", "markersize": 8, "markerfacecolor": "none", "color": "black"}


def draw_test(ax_srcc: Axes, ax_plcc: Axes, run: RunSummary, colour: str) -> bool:
    """The run's test SRCC and PLCC at the epoch of best_model.pkl; False when it has none."""
    test = run.test
    if not test or test["epoch"] is None:
        return False
    marker = {**TEST_MARKER, "color": colour, "markeredgewidth": 2, "linestyle": "none"}
    drawn = False
    for ax, key in ((ax_srcc, "srcc"), (ax_plcc, "plcc")):
        if test[key] is not None:
            ax.plot([test["epoch"]], [test[key]], **marker)
            drawn = True
    return drawn


def make_figure(runs: list[RunSummary]) -> Figure:
    # Figure + the Agg canvas directly (no pyplot): no global figure state and
    # no display backend needed on a headless training box.
    fig = Figure(figsize=(16, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_srcc, ax_plcc = fig.subplots(1, 3)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    run_handles = []
    any_val = any_test = False

    for run, label, colour in zip(runs, run_labels(runs), colours, strict=True):
        # Markers keep a run with a single epoch visible (a line needs two points).
        style = {"color": colour, "marker": "o", "markersize": 3, "linewidth": 1.6}
        ax_loss.plot(*run.series("train_loss"), **style)
        ax_srcc.plot(*run.series("train_srcc"), linestyle="-", **style)
        val_srcc = run.series("val_srcc")
        val_plcc = run.series("val_plcc")
        any_val = any_val or bool(val_srcc[0] or val_plcc[0])
        ax_srcc.plot(*val_srcc, linestyle="--", **style)
        ax_plcc.plot(*val_plcc, linestyle="--", **style)
        if run.best_epoch is not None and run.best_val_srcc is not None:
            # The epoch whose weights are in best_model.pkl.
            ax_srcc.plot(
                [run.best_epoch], [run.best_val_srcc], marker="*", markersize=12,
                color=colour, markeredgecolor="black", linestyle="none",
            )  # fmt: skip
        any_test = draw_test(ax_srcc, ax_plcc, run, colour) or any_test
        run_handles.append(Line2D([], [], color=colour, linewidth=2.5, label=label))

    ax_loss.set(title="Train loss (L1)", xlabel="epoch", ylabel="loss")
    test_note = ", ◇ test" if any_test else ""
    ax_srcc.set(
        title=f"SRCC (train solid, val dashed; ★ best{test_note})", xlabel="epoch", ylabel="SRCC"
    )
    ax_plcc.set(title=f"PLCC (val dashed{test_note})", xlabel="epoch", ylabel="PLCC")
    for ax in (ax_loss, ax_srcc, ax_plcc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not any_val:
        # val_split 0: say so instead of leaving a blank panel that looks broken.
        ax_plcc.text(
            0.5, 0.5, "no validation metrics\n(val_split 0)", transform=ax_plcc.transAxes,
            ha="center", va="center", color="grey",
        )  # fmt: skip
        if not any_test:
            ax_plcc.set(xticks=[], yticks=[])  # an empty axis would show meaningless ±0.04 ticks
    kinds = [
        Line2D([], [], color="black", linestyle="-", label="train"),
        Line2D([], [], color="black", linestyle="--", label="val"),
    ]
    if any_test:
        kinds.append(Line2D([], [], linestyle="none", label="test", **TEST_MARKER))
    ax_srcc.legend(handles=kinds, loc="lower right")
    fig.legend(
        handles=run_handles, loc="outside lower center", ncol=min(len(runs), 3), frameon=False
    )
    title = "HyperIQA training curves" if len(runs) > 1 else f"HyperIQA training: {runs[0].name}"
    fig.suptitle(title, fontsize=14)
    return fig


def save_atomic(fig: Figure, output: Path) -> None:
    """Save via a temp file + rename, so a viewer never shows a half-written PNG."""
    fmt = (output.suffix or ".png").lstrip(".")
    write_atomic(output, lambda f: fig.savefig(f, format=fmt))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="plot_metrics.py",
        description="Plot loss/SRCC/PLCC curves of one or more run folders into one image.",
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run folders; a protocol folder (run_protocol.py --out) stands for its seed<k> runs",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("curves.png"), help="image to write (curves.png)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A folder that is not a run (a failed start, a stray folder a glob caught)
    # is skipped with a note, as compare_runs.py does; no run at all is an error.
    runs = []
    for given in args.run_dirs:
        try:
            folders = run_folders(given)
        except OSError as exc:
            print(
                f"{PROG}: skipped {given}: cannot read it: {exc.strerror or exc}", file=sys.stderr
            )
            continue
        if not folders:
            print(f"{PROG}: skipped {given}: {NO_SPLITS}", file=sys.stderr)
        for run_dir in folders:
            try:
                runs.append(load_run(run_dir))
            except RunFolderError as exc:
                print(f"{PROG}: skipped {run_dir}: {exc}", file=sys.stderr)
    if not runs:
        raise SystemExit(f"{PROG}: error: none of the {len(args.run_dirs)} folders is a run")
    for run in runs:
        if not run.epochs:
            print(f"{PROG}: note: {run.path} has no epochs yet", file=sys.stderr)

    output: Path = args.output
    if not output.parent.is_dir():
        raise SystemExit(f"{PROG}: error: folder of --output {output} does not exist")
    inputs = [run.path / name for run in runs for name in ("metrics.json", "args.json")]
    source = overwritten_input(output, inputs)
    if source is not None:
        raise SystemExit(f"{PROG}: error: --output {output} would overwrite the input {source}")
    fig = make_figure(runs)
    try:
        save_atomic(fig, output)
    except (OSError, ValueError) as exc:
        # ValueError: an extension matplotlib cannot write (e.g. -o curves.xyz).
        raise SystemExit(f"{PROG}: error: cannot write {output}: {exc}") from None
    print(f"{PROG}: wrote {output} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
