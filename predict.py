"""Score images with a trained HyperIQA checkpoint: a few files, or a whole collection.

    python predict.py --checkpoint best_model.pkl photo1.jpg photo2.png
    python predict.py --checkpoint C photos/ --list more.txt --output scores.csv
    python predict.py --checkpoint C photos/ --output scores.csv --resume
    torchrun --nproc_per_node 8 predict.py --checkpoint C photos/ --output scores.csv

Each image (any size or format Pillow and DALI read) is resized to the training
size and scored as the mean over ``--patch_num`` seeded crops, as evaluate.py
scores; the same image gets the same score on every run. Folders are walked
(image extensions only), lists read as a stream, rows written as windows of
images finish; a bad image is a row with its reason, never the end of the run.
docs/scoring.md has the whole story; the work is in hyperiqa/collection.py.

Exit codes: 0 every image scored; 3 finished, but some images could not be
scored (their rows say why); 1 an error (a bad flag value, checkpoint or
output) -- before any row, or, later, with the rows so far kept for --resume;
2 a usage error; 130 interrupted (with --output: continue with --resume); 141
standard output closed by its reader (``| head``).
"""

from __future__ import annotations

from hyperiqa.stopping import quiet_start  # the standard library only: loads at once

if __name__ == "__main__":  # a command, not an import: Ctrl-C while torch loads is one line
    quiet_start("predict.py")

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from hyperiqa.arg_types import HelpFormatter, positive_int
from hyperiqa.collection import Summary, score_collection
from hyperiqa.config import add_scoring_flags, parse_scoring_args, scoring_options
from hyperiqa.distributed import launched_by_torchrun
from hyperiqa.errors import USER_ERRORS, report
from hyperiqa.run_folder import shell_path
from hyperiqa.score_output import Done, OutputFile, ScoreRow
from hyperiqa.stopping import EXIT_INTERRUPTED, Interrupted, StopSignals, report_interrupt

PROG = "predict.py"
EXIT_SOME_FAILED = 3
EXIT_BROKEN_PIPE = 141  # the shell's code for a process ended by SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Score images with a HyperIQA checkpoint (higher = better quality): "
        "files, folders (walked) and lists of paths. Exit code 0: all scored; 3: some "
        "images could not be scored (their rows say why); 1: an error; 130: interrupted.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE_OR_FOLDER",
        help="image files, and folders to walk recursively (sorted; files with an image "
        "extension only)",
    )
    p.add_argument(
        "--list",
        dest="lists",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of image paths (or folders), one per line, read as a stream; - reads "
        "standard input; may be repeated",
    )
    p.add_argument(
        "--output",
        default=None,
        metavar="FILE",
        help="append rows image,score,error to FILE (.csv or .jsonl) as windows of images "
        "finish; without it, `path<TAB>score` lines go to standard output",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue an --output that exists: skip the images it holds (a row cut by a "
        "kill is repaired)",
    )
    again.add_argument(
        "--overwrite", action="store_true", help="start an --output that exists again"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print a JSON list of {"image", "score"} (and "error") at the end: for a few '
        "images; a collection wants --output FILE.jsonl, written as it goes",
    )
    add_scoring_flags(p)
    # Tests: small chunks, so a few images make several (several rounds under torchrun).
    p.add_argument("--chunk_images", type=positive_int, default=None, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_scoring_args(parser, argv)
    if not args.images and not args.lists:
        parser.error("give images or folders to score, or --list FILE")
    if "" in args.images:
        parser.error("an empty image path was given (an unset shell variable?)")
    if (args.resume or args.overwrite) and not args.output:
        parser.error("--resume and --overwrite are about an --output file")
    if args.json and args.output:
        parser.error("--json prints to standard output; with --output, use a .jsonl file")
    return args


class PrintRows:
    """No --output: ``path<TAB>score`` per image on standard output as windows finish;
    an image that cannot be scored is a line on standard error."""

    def prepare(self, inputs: Sequence[Path], window: int) -> Done:
        return Done(Counter())

    def begin(self, settings: Callable[[], Mapping[str, object]]) -> None:
        return None  # nothing recorded: the checkpoint is not read again

    def write(self, rows: Sequence[ScoreRow]) -> None:
        for row in rows:
            if row.error is None:
                print(f"{row.image}\t{row.score:.4f}")
            else:
                print(f"{PROG}: cannot score {row.image}: {row.error}", file=sys.stderr)
        sys.stdout.flush()

    def close(self) -> None:
        pass


class JsonRows(PrintRows):
    """--json: the rows, kept for one JSON list printed at the end (a few images)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write(self, rows: Sequence[ScoreRow]) -> None:
        for row in rows:
            item = {"image": row.image, "score": row.score}
            if row.error is not None:
                item["error"] = row.error
            self.rows.append(item)

    def print(self) -> None:
        print(json.dumps(self.rows, indent=2))


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues this run."""
    if launched_by_torchrun():
        return "the same torchrun command with --resume"
    kept = [a for a in argv if a != "--overwrite"]
    if "--resume" not in kept:
        kept.append("--resume")
    # This interpreter and this file as seen from here: it works as printed, from here.
    return shlex.join([shell_path(Path(sys.executable)), shell_path(Path(__file__)), *kept])


def summary_line(s: Summary, output: str | None) -> str:
    done = s.scored + s.failed
    parts = [f"{s.scored:,} image{'' if s.scored == 1 else 's'} scored"]
    if s.failed:
        parts.append(f"{s.failed:,} failed (their rows say why)")
    if s.skipped:
        earlier = f" ({s.failed_before:,} of them failed)" if s.failed_before else ""
        parts.append(f"{s.skipped:,} already in the output{earlier}")
    rate = f"{s.seconds:.1f} s, {s.images_per_s:.1f} images/s" if done else f"{s.seconds:.1f} s"
    where = f"; rows in {output}" if output else ""
    ranks = f" on {s.world_size} processes" if s.world_size > 1 else ""
    return f"{PROG}: {', '.join(parts)} in {rate}{ranks}{where}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # A file name that is not UTF-8 is printed as its bytes, as ls prints it.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="surrogateescape")
    if args.output:
        sink = OutputFile(args.output, resume=args.resume, overwrite=args.overwrite)
    else:
        sink = JsonRows() if args.json else PrintRows()
    summary = Summary()
    echo = partial(print, file=sys.stderr)
    with StopSignals() as signals:
        try:
            score_collection(
                args.checkpoint,
                args.images,
                args.lists,
                sink,
                **scoring_options(args),
                chunk_images=args.chunk_images,
                echo=echo,
                progress=sys.stderr.isatty(),
                stop=lambda: signals.requested is not None,
                deferring=signals.deferred,
                summary=summary,
            )
        except USER_ERRORS as e:
            code = report(PROG, e)
            if summary.started and args.output and summary.scored + summary.failed:
                echo(f"{PROG}: the rows written so far are kept; continue with: "
                     f"{resume_command(argv)}")  # fmt: skip
            return code
        except (KeyboardInterrupt, Interrupted):
            if not summary.started:
                return report_interrupt(PROG)
            summary.stopped = True
        except BrokenPipeError:
            # The reader of standard output went away (`| head`): stop quietly, as
            # command-line tools do; later writes go nowhere instead of failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
    if summary.rank != 0:  # rank 0 speaks for the run
        return EXIT_INTERRUPTED if summary.stopped else 0
    if isinstance(sink, JsonRows):
        sink.print()
    if summary.stopped:
        done = summary.scored + summary.failed
        if args.output:
            echo(f"{PROG}: interrupted after {done:,} images, written to {args.output}; "
                 f"continue with: {resume_command(argv)}")  # fmt: skip
        else:
            echo(f"{PROG}: interrupted after {done:,} images")
        return EXIT_INTERRUPTED
    if summary.unmatched:
        echo(f"note: {summary.unmatched:,} rows of {args.output} name no input of this run "
             "(scored from other inputs, or another current folder?)")  # fmt: skip
    echo(summary_line(summary, args.output))
    # The file's state, not this run's alone: failed rows a resumed run skipped count.
    return EXIT_SOME_FAILED if summary.failed or summary.failed_before else 0


if __name__ == "__main__":
    sys.exit(main())
