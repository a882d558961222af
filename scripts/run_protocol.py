"""Run a research protocol on KonIQ-10k: N splits, each trained and tested, then summarised.

    # the paper's: 10 random 80/20 splits by image, median of the 10 test scores
    python scripts/run_protocol.py --koniq_root ../datasets/koniq10k --seeds 0-9 \\
        --out ../checkpoints/protocol_paper
    # the official split, trained 3 times; flags after -- go to train.py
    python scripts/run_protocol.py --koniq_root ../datasets/koniq10k --split official \\
        --seeds 0-2 --out ../checkpoints/protocol_official -- --loader dali
    python scripts/run_protocol.py ... --gpus 8      # each split on 8 GPUs (torchrun)

For each seed k, in order:
  1. The split. --split random (the default): scripts/prepare_koniq.py --seed k
     writes OUT/splits/seed<k>/koniq_{train,val,test}.json, a seeded split by
     image (--test_fraction of the images for test, --val_fraction of the rest
     for validation). --split official: KonIQ's own sets, one split shared by
     every seed (OUT/splits/official/); the seeds then change only the
     initialisation and the crops: repeated training on the official split,
     reported the same way (as pyiqa-style benchmarks do). A split whose
     three files exist is not prepared again.
  2. The run: train.py with that split's --train_json/--val_json/--test_json
     and --seed k into OUT/seed<k>, a normal run folder. Validation chooses
     best_model.pkl; at the end it is scored on the test split (metrics.json
     "test"). A finished split is skipped, an unfinished one continued with
     --resume.
  3. The summary: OUT/summary.json and a table of each split's test
     SRCC/PLCC/KRCC with their median, mean and sample std (ddof=1) over the
     finished splits (hyperiqa/protocol.py). It covers every split of the
     protocol: the --seeds given and any other OUT/seed<k> already there, so
     --seeds 0-4 now and --seeds 5-9 later end with a summary of all 10.

OUT/protocol.json records the split settings and the train.py flags of the
first start. A later start with other settings is refused (use another --out),
so a summary never mixes protocols; --seeds may change (add splits later).
Speed-only flags (--num_workers, --dali_*, ...) may change too, as with
train.py --resume. For the same reason every finished split (skipped or
summarised) must have been trained under protocol.json: its args.json is
compared with it first, and a split trained with other settings (copied in,
or left from an older protocol) is refused in one line naming the split and
the flags that differ, before anything is trained. Without protocol.json
(--summary_only on folders trained by hand) the finished splits are compared
with each other instead.

Stopping: Ctrl-C or SIGTERM is passed on, once, to the running train.py (or
to torchrun, which relays it to its workers): it stops at its next safe point
and leaves a resumable folder; the runner then exits 130 and prints the
command that continues (the same one). A split that fails stops the protocol: one line naming the
seed, its run folder and the exit code (exit code 1). With --keep_going the
runner notes the failure, goes on with the next seed, lists the failed split
in the summary and exits 1 at the end.

KonIQ-10k only: the splits come from prepare_koniq.py. For another dataset,
train each split by hand into OUT/seed<k> (train.py --test_json ...) and
summarise with --summary_only, which only reads the run folders.
"""

from __future__ import annotations

from hyperiqa.stopping import quiet_start  # the standard library only: loads at once

if __name__ == "__main__":  # a command, not an import: Ctrl-C while torch loads is one line
    quiet_start("run_protocol", "interrupted before any split started")

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from hyperiqa.arg_types import open_fraction, positive_int
from hyperiqa.atomic import write_bytes_atomic
from hyperiqa.config import flags_json
from hyperiqa.config import parse_args as parse_train_args
from hyperiqa.errors import JSON_ERRORS, json_problem
from hyperiqa.protocol import format_summary, parse_seeds, summarize, write_summary
from hyperiqa.run_folder import ARGS, RunFolder, shell_path
from hyperiqa.run_summary import PROTOCOL, SPLIT_FOLDER, SUMMARY, RunFolderError, load_run
from hyperiqa.spec import ADDED_SINCE_FIRST_RELEASE, RESUME_MAY_CHANGE
from hyperiqa.stopping import EXIT_INTERRUPTED, STOP_SIGNALS, Interrupted

PROG = "run_protocol"
REPO = Path(__file__).resolve().parents[1]
PARTS = ("train", "val", "test")  # prepare_koniq.py writes koniq_<part>.json
DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION = 0.2, 0.1
# train.py flags the runner sets for every split; the user may not set them after --.
RESERVED = ("--dataset_root", "--train_json", "--val_json", "--test_json", "--val_split",
            "--seed", "--checkpoint_dir", "--resume", "--overwrite", "--demo")  # fmt: skip
# Flags in args.json that name the split rather than the protocol (or change only speed).
NOT_PROTOCOL = RESUME_MAY_CHANGE | {"seed", "train_json", "val_json", "test_json", "world_size"}
# Signals passed on to the training: Ctrl-C, SIGTERM, and a closed terminal.
FORWARDED = (*STOP_SIGNALS, signal.SIGHUP)


class ProtocolError(Exception):
    """A user-facing failure; the message is the one line the user sees."""


# -- the command line --------------------------------------------------------------------


def seeds_type(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_protocol.py",
        usage="%(prog)s --koniq_root DIR --out DIR [options] [-- train.py flags]",
        description="Train and test HyperIQA on N splits of KonIQ-10k and summarise the "
        "test scores (median, mean, sample std). Flags after -- go to train.py.",
        allow_abbrev=False,
    )
    p.add_argument("--out", type=Path, required=True, help="protocol folder (run folders inside)")
    p.add_argument("--koniq_root", type=Path, help="KonIQ-10k folder: its CSV files and 1024x768/")
    p.add_argument(
        "--dataset_root",
        type=Path,
        default=Path("../datasets/"),
        help="image paths in the split files are relative to this (default ../datasets/)",
    )
    p.add_argument(
        "--seeds",
        type=seeds_type,
        default=parse_seeds("0-9"),
        help="splits to run: 0-9 (default), 0,3,5 or 0-4,7; the summary also covers "
        "any other OUT/seed<k> already there",
    )
    p.add_argument(
        "--split",
        choices=["random", "official"],
        default="random",
        help="random: a seeded split by image per seed (the paper's protocol, default); "
        "official: KonIQ's sets, the same for every seed",
    )
    p.add_argument(
        "--test_fraction",
        type=open_fraction,
        help=f"--split random: share of all images for test (default {DEFAULT_TEST_FRACTION})",
    )
    p.add_argument(
        "--val_fraction",
        type=open_fraction,
        help=f"--split random: share of the other images for validation "
        f"(default {DEFAULT_VAL_FRACTION})",
    )
    p.add_argument(
        "--gpus", type=positive_int, default=1, help="GPUs per split; above 1 through torchrun"
    )
    p.add_argument(
        "--keep_going",
        action="store_true",
        help="after a failed split, go on with the next one (exit code 1 at the end)",
    )
    p.add_argument(
        "--summary_only",
        action="store_true",
        help="train nothing: summarise the run folders OUT/seed<k> as they are (--seeds "
        "and any other found); finished ones are first checked against OUT/protocol.json",
    )
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The runner's flags; ``train_flags`` holds the train.py flags after ``--``."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:cut])
    args.train_flags = argv[cut + 1 :]
    if args.summary_only:
        return args
    if args.koniq_root is None:
        parser.error("the following arguments are required: --koniq_root")
    fractions = {"--test_fraction": args.test_fraction, "--val_fraction": args.val_fraction}
    for flag, value in fractions.items():
        if args.split == "official" and value is not None:
            parser.error(f"argument {flag}: only with --split random")
    if args.test_fraction is None:
        args.test_fraction = DEFAULT_TEST_FRACTION
    if args.val_fraction is None:
        args.val_fraction = DEFAULT_VAL_FRACTION
    return args


def this_command(argv: Sequence[str]) -> str:
    """The command that runs the protocol again as given (it continues where it stopped)."""
    return shlex.join([shell_path(Path(sys.executable)), shell_path(Path(__file__)), *argv])


# -- the protocol's layout and settings ---------------------------------------------------


def run_dir(out: Path, seed: int) -> Path:
    return out / f"seed{seed}"


def split_dir(out: Path, split: str, seed: int) -> Path:
    return out / "splits" / ("official" if split == "official" else f"seed{seed}")


def split_files(folder: Path) -> dict[str, Path]:
    return {part: folder / f"koniq_{part}.json" for part in PARTS}


def split_flags(args: argparse.Namespace, seed: int) -> list[str]:
    """The train.py flags that name split ``seed``: its data, its seed, its folder."""
    files = split_files(split_dir(args.out, args.split, seed))
    return [
        "--dataset_root", str(args.dataset_root),
        "--train_json", str(files["train"]),
        "--val_json", str(files["val"]),
        "--test_json", str(files["test"]),
        "--seed", str(seed),
        "--checkpoint_dir", str(run_dir(args.out, seed)),
    ]  # fmt: skip


def check_train_flags(flags: Sequence[str]) -> None:
    for token in flags:
        flag = token.split("=", 1)[0]
        if flag == "--dataset_root":
            raise ProtocolError("--dataset_root is a flag of the runner: give it before --")
        if flag in RESERVED:
            raise ProtocolError(f"{flag} after -- is set by {PROG} for each split; leave it out")


def train_settings(argv: Sequence[str]) -> dict:
    """train.py's resolved flags for ``argv``, checked by train.py's own parser, so a
    typo fails here, before any split is prepared. Its error becomes one line."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return flags_json(parse_train_args(argv))
    except SystemExit as exc:
        if exc.code == 0:  # -- --help: train.py's help was printed
            raise
        message = (errors.getvalue().strip().splitlines() or ["invalid flags"])[-1]
        raise ProtocolError(f"train.py flags after --: {message.partition('error: ')[2]}") from None


def protocol_settings(args: argparse.Namespace) -> dict:
    """What protocol.json records: what makes two starts the same protocol."""
    check_train_flags(args.train_flags)
    train = train_settings([*split_flags(args, args.seeds[0]), *args.train_flags])
    return {
        "dataset": "koniq10k",
        "koniq_root": str(args.koniq_root),
        "split": args.split,
        "test_fraction": args.test_fraction if args.split == "random" else None,
        "val_fraction": args.val_fraction if args.split == "random" else None,
        "train": {k: v for k, v in sorted(train.items()) if k not in NOT_PROTOCOL},
        "train_flags": list(args.train_flags),  # as typed, for the record
    }


def differences(saved: dict, now: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs (train flags one by one)."""
    # A protocol started before a flag existed ran with that flag's first value.
    saved_train = {**ADDED_SINCE_FIRST_RELEASE, **saved.get("train", {})}
    flat_saved = {**saved, **{f"train.{k}": v for k, v in saved_train.items()}}
    flat_now = {**now, **{f"train.{k}": v for k, v in now.get("train", {}).items()}}
    keys = sorted((set(flat_saved) | set(flat_now)) - {"train", "train_flags"})
    return [
        f"{k}: {flat_saved.get(k)!r} -> {flat_now.get(k)!r}"
        for k in keys
        if flat_saved.get(k) != flat_now.get(k)
    ]


def read_protocol(out: Path) -> dict | None:
    """OUT/protocol.json, checked to be a protocol record; None when there is none."""
    path = out / PROTOCOL
    if not path.exists():
        return None
    if not path.is_file():  # not to be taken for "no protocol": its splits go unchecked
        raise ProtocolError(f"{path} is not a file; restore it or use another --out")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProtocolError(f"cannot read {path}: {exc.strerror or exc}") from None
    except JSON_ERRORS as exc:
        raise ProtocolError(f"cannot read {path}: {json_problem(exc)}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        raise ProtocolError(
            f'{path} is not a protocol record (a JSON object with a "train" object); '
            "restore it or use another --out"
        )
    return saved


def claim_protocol(out: Path, settings: dict) -> None:
    """Write OUT/protocol.json on the first start; later starts must match it."""
    path = out / PROTOCOL
    saved = read_protocol(out)
    if saved is not None:
        diffs = differences(saved, settings)
        if diffs:
            raise ProtocolError(
                f"{out} holds a protocol with other settings ({path}): "
                + "; ".join(diffs)
                + "; use another --out for a new protocol"
            )
        return
    if out.exists() and not out.is_dir():
        raise ProtocolError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, (json.dumps(settings, indent=2) + "\n").encode())
    except OSError as exc:
        raise ProtocolError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- the splits it finds, and their settings ------------------------------------------------


def protocol_seeds(out: Path, seeds: Sequence[int]) -> list[int]:
    """The splits of the protocol in ``out``: ``seeds`` and every other OUT/seed<k>
    folder there, in order. A summary of only the latest --seeds would silently
    drop the splits of an earlier start."""
    found = set()
    with contextlib.suppress(OSError):  # no --out folder yet
        for entry in out.iterdir():
            match = SPLIT_FOLDER.fullmatch(entry.name)
            if match and entry.is_dir():
                found.add(int(match[1]))
    return sorted(set(seeds) | found)


def as_decided(asked: dict, used: dict) -> dict:
    """protocol.json's train settings ``asked``, with each choice train.py leaves
    to the machine (``auto``, a default) replaced by what a split's args.json
    ``used`` says it became, as hyperiqa.config.resolve decides it:
    args.json records the values used, protocol.json the flags given."""
    decided = dict(asked)
    cuda = used.get("device") == "cuda"
    for key, choices in (("device", ("cuda", "cpu")), ("loader", ("dali", "pillow"))):
        if asked.get(key) == "auto" and used.get(key) in choices:
            decided[key] = used[key]
    if "amp" in asked and asked["amp"] is None:  # the default: bf16 on CUDA, fp32 elsewhere
        decided["amp"] = "bf16" if cuda else "off"
    if "channels_last" in asked:  # NHWC applies on CUDA only
        decided["channels_last"] = asked["channels_last"] is True and cuda
    if "shuffle_window" in asked and asked["shuffle_window"] is None:
        decided["shuffle_window"] = asked.get("batch_size")
    return decided


def split_differences(expected: dict, used: dict) -> list[str]:
    """``flag: expected -> used`` for every setting of the protocol that differs."""
    expected = {**ADDED_SINCE_FIRST_RELEASE, **expected}
    used = {**ADDED_SINCE_FIRST_RELEASE, **used}
    keys = sorted((set(expected) | set(used)) - NOT_PROTOCOL)
    return [
        f"{k}: {expected.get(k)!r} -> {used.get(k)!r}"
        for k in keys
        if expected.get(k) != used.get(k)
    ]


def finished_args(folder: Path) -> dict | None:
    """The args.json of the run in ``folder`` if it finished with a test score (a
    split the summary counts), {} when that run has no args.json, else None."""
    try:
        run = load_run(folder)
    except RunFolderError:
        return None  # not a readable run: the summary lists it as excluded
    if not run.completed or run.test is None:
        return None
    return run.args if (folder / ARGS).is_file() else {}


def check_splits(out: Path, seeds: Sequence[int], protocol: dict | None) -> None:
    """Refuse (ProtocolError) if a finished split was trained with other settings
    than ``protocol`` (protocol.json), or, without one, than the first finished
    split: a summary never mixes protocols."""
    first: tuple[str, dict] | None = None  # without protocol.json, the yardstick
    for seed in seeds:
        folder = run_dir(out, seed)
        used = finished_args(folder)
        if used is None:
            continue
        split = f"seed {seed} ({folder})"
        against = str(out / PROTOCOL) if protocol is not None else first and first[0]
        if not used:
            raise ProtocolError(
                f"{split} has no {ARGS}, so its settings cannot be compared with "
                f"{against or 'the other splits'}; restore it or move the folder out of {out}"
            )
        if protocol is not None:  # the runner trained it with --seed <k>
            diffs = split_differences(as_decided(protocol["train"], used), used)
            if used.get("seed") != seed:
                diffs.insert(0, f"seed: {seed!r} -> {used.get('seed')!r}")
        elif first is None:
            first = (split, used)
            continue
        else:
            diffs = split_differences(first[1], used)
        if diffs:
            raise ProtocolError(
                f"{split} was trained with other settings than {against}: "
                + "; ".join(diffs)
                + f"; it is not a split of this protocol: move it out of {out} "
                "(or use another --out)"
            )


# -- the commands it runs --------------------------------------------------------------------


def prepare_command(args: argparse.Namespace, seed: int) -> list[str]:
    cmd = [
        sys.executable, str(REPO / "scripts" / "prepare_koniq.py"),
        "--koniq_root", str(args.koniq_root),
        "--dataset_root", str(args.dataset_root),
        "--out_dir", str(split_dir(args.out, args.split, seed)),
        "--split", args.split,
    ]  # fmt: skip
    if args.split == "random":
        cmd += ["--seed", str(seed), "--test_fraction", str(args.test_fraction),
                "--val_fraction", str(args.val_fraction)]  # fmt: skip
    return cmd


def launcher(gpus: int) -> list[str]:
    """The running interpreter; with several GPUs, torchrun's module under it
    (one process per GPU on this machine), as scripts/train.sh --gpus does."""
    if gpus == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(gpus)]  # fmt: skip


def train_command(args: argparse.Namespace, seed: int, resume: bool) -> list[str]:
    flags = [*split_flags(args, seed), *args.train_flags, *(["--resume"] if resume else [])]
    return [*launcher(args.gpus), str(REPO / "train.py"), *flags]


# -- running them ----------------------------------------------------------------------------


class Children:
    """Runs one child process at a time and passes the stop signals on to it.

    Each child gets its own process group, so a Ctrl-C in the terminal reaches
    only this runner, which sends it on to the child alone, once: train.py
    stops at its next safe point as if stopped by hand (a second Ctrl-C stops
    it at once). torchrun relays the signal to each of its workers. A signal
    while no child runs stops the runner at once (Interrupted).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._child: subprocess.Popen | None = None
        self._starting = False
        self._pending: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Children:
        self._previous = {s: signal.signal(s, self._on_signal) for s in FORWARDED}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum
        if self._child is None and not self._starting:
            raise Interrupted
        self._pending.append(signum)
        self._forward()

    def _forward(self) -> None:
        # pop() hands each signal to exactly one caller, the handler or run(). A
        # child already waited for is not signalled: its pid may belong to another.
        while self._child is not None and self._child.returncode is None and self._pending:
            signum = self._pending.pop(0)
            # train.py stops at a safe point on SIGINT/SIGTERM; SIGHUP would kill it
            # outright, so a closed terminal reaches it as SIGTERM.
            signum = signal.SIGTERM if signum == signal.SIGHUP else signum
            with contextlib.suppress(ProcessLookupError):  # it has just ended
                os.kill(self._child.pid, signum)

    def run(self, cmd: list[str]) -> int:
        """Run ``cmd`` to its end; its exit code. Interrupted once it has ended, if a
        stop signal came meanwhile (or it reports one itself: exit code 130)."""
        if self.received is not None:
            raise Interrupted
        self._starting = True  # a signal now is kept for the child, not lost
        try:
            self._child = subprocess.Popen(cmd, start_new_session=True)
            self._forward()
            code = self._child.wait()
        finally:
            self._child, self._starting = None, False
        if self.received is not None or code == EXIT_INTERRUPTED:
            raise Interrupted
        return code


def next_step(folder: Path) -> str:
    """What split folder ``folder`` needs: "skip" (finished with a test score),
    "foreign" (finished without one: not this protocol's), "resume" or "train"."""
    with contextlib.suppress(RunFolderError):
        run = load_run(folder)
        if run.completed:
            return "skip" if run.test is not None else "foreign"
    return "resume" if RunFolder(folder, epochs=1).holds_run() else "train"


def run_split(args: argparse.Namespace, seed: int, children: Children) -> str | None:
    """Prepare, train and test split ``seed``; None, or what went wrong (one phrase)."""
    folder = run_dir(args.out, seed)
    step = next_step(folder)
    if step == "skip":
        print(f"{PROG}: seed {seed}: finished, skipped ({folder})", flush=True)
        return None
    if step == "foreign":
        return "it holds a finished run without a test score, not one of this protocol"
    files = split_files(split_dir(args.out, args.split, seed))
    if not all(path.is_file() for path in files.values()):
        print(f"{PROG}: seed {seed}: preparing the split", flush=True)
        code = children.run(prepare_command(args, seed))
        if code != 0:
            return f"prepare_koniq.py exit code {code}"
    verb = "resuming" if step == "resume" else "training"
    print(f"{PROG}: seed {seed}: {verb} {folder}", flush=True)
    code = children.run(train_command(args, seed, resume=step == "resume"))
    return None if code == 0 else f"train.py exit code {code}"


def report_summary(args: argparse.Namespace, failures: dict[int, str]) -> None:
    """Write OUT/summary.json and print the table: every split of the protocol,
    each finished one checked against protocol.json first."""
    protocol = read_protocol(args.out)
    seeds = protocol_seeds(args.out, args.seeds)
    check_splits(args.out, seeds, protocol)
    extra = [seed for seed in seeds if seed not in args.seeds]
    if extra:
        found = ", ".join(map(str, extra))
        print(f"{PROG}: the summary covers every split in {args.out}: also seed {found}")
    summary = summarize({seed: run_dir(args.out, seed) for seed in seeds}, failures)
    if protocol is not None:
        summary = {"protocol": protocol, **summary}
    try:
        write_summary(args.out / SUMMARY, summary)
    except OSError as exc:
        raise ProtocolError(f"cannot write {args.out / SUMMARY}: {exc.strerror or exc}") from None
    print(format_summary(summary))
    print(f"{PROG}: wrote {args.out / SUMMARY}")


def run_protocol(args: argparse.Namespace, children: Children) -> int:
    if args.summary_only:
        if not args.out.is_dir():
            raise ProtocolError(f"--out {args.out} is not a directory")
        report_summary(args, {})
        return 0
    if not args.koniq_root.is_dir():
        raise ProtocolError(f"--koniq_root {args.koniq_root} is not a directory")
    claim_protocol(args.out, protocol_settings(args))
    # Before any training: a foreign finished split would only be refused hours later.
    check_splits(args.out, protocol_seeds(args.out, args.seeds), read_protocol(args.out))
    failures: dict[int, str] = {}
    for seed in args.seeds:
        try:
            failure = run_split(args, seed, children)
        except Interrupted:
            raise Interrupted(f"during seed {seed}") from None
        if failure is None:
            continue
        failures[seed] = failure
        line = f"seed {seed} failed ({failure}); run folder {run_dir(args.out, seed)}"
        if not args.keep_going:
            raise ProtocolError(f"{line}; fix it, then run the same command to go on")
        print(f"{PROG}: {line}; going on with the next seed (--keep_going)", file=sys.stderr)
    report_summary(args, failures)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        with Children() as children:
            return run_protocol(args, children)
    except ProtocolError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        where = f" {exc}" if str(exc) else ""
        print(
            f"{PROG}: stopped{where}; finished splits are kept and an unfinished one "
            f"resumes. Continue with: {this_command(argv)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
