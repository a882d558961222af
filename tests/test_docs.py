"""README.md and docs/*.md against the code: every command shown runs as printed,
as far as can be told without running the work.

- Each command in a ```bash block (lines joined across ``\\``, shell variables
  replaced by their value in the block or a placeholder, ``...`` taken as "your
  other flags" and dropped) is parsed by its program's own argparse parser:
  train.py (also through scripts/train.sh and torchrun), evaluate.py,
  predict.py, scripts/*.py, bench/*.py, ``python -m hyperiqa.*``; torchrun's own
  flags by torchrun's parser; ``make`` targets must exist in the Makefile and a
  gpu_check.sh argument must be one it takes. Only commands of other tools
  (git, pip, ...) are left alone, and they are listed here by name.
- Every repository path a command names exists; every ``../checkpoints/NAME``
  (a glob too) matches a run folder that a documented training command makes;
  every demo image named is one the demo writes.
- Every relative link resolves, its #anchor included; every docs page is linked
  from the README; paths and flags in `inline code` exist; the flag table of
  docs/training.md lists exactly train.py's flags.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import importlib.util
import inspect
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from unittest import mock

from hyperiqa import config
from hyperiqa.demo_data import DEMO_NUM_IMAGES, demo_file_name, demo_plan
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHECKPOINTS = PurePosixPath("../checkpoints")  # where train.py puts runs by default
DEMO_IMAGES = PurePosixPath(config.DEMO_ROOT.as_posix()) / "images"
# Tools of other projects: their commands are shown, not checked.
OTHER_TOOLS = {"git", "cd", "source", "pip", "nvidia-smi", "find"}
# Flags of those tools that the docs mention in running text.
OTHER_FLAGS = {"--index-url", "--dry-run", "--report", "--standalone", "--nproc_per_node"}
ELIDED = "..."  # "and your other flags"
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>"}


@dataclass
class Command:
    doc: str  # the file it is shown in
    text: str  # as shown, continuation lines joined
    argv: list[str]
    variables: dict[str, str] = field(default_factory=dict)  # the block's, at this line

    def __str__(self) -> str:
        return f"{self.doc}: {self.text}"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def substitute(token: str, variables: dict[str, str]) -> str:
    """$NAME and ${NAME}: the block's value, else a placeholder (a word, not a path)."""
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: variables.get(m[1], "PLACEHOLDER"), token)


def commands_of(doc: Path) -> list[Command]:
    found = []
    for block in bash_blocks(doc.read_text(encoding="utf-8")):
        variables: dict[str, str] = {}
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True  # words as the shell splits them; '#' starts a comment
            words: list[str] = []
            pieces = [*list(lexer), ";"]
            skip_next = False
            for token in pieces:
                if skip_next:  # the file of a redirection: the shell's, not the program's
                    skip_next = False
                elif token in REDIRECTIONS:
                    skip_next = True
                elif token in SEPARATORS:
                    command = _command(doc, line, words, variables)
                    if command:
                        found.append(command)
                    words = []
                else:
                    words.append(token)
    return found


def _command(doc: Path, line: str, words: list[str], variables: dict) -> Command | None:
    """A command from its words; leading NAME=VALUE words set variables (alone:
    for the rest of the block; before a program: for that command)."""
    local = dict(variables)
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        local[name] = substitute(value, local)
    if not words:
        variables.update(local)
        return None
    argv = [substitute(w, local) for w in words if w != ELIDED]
    text = re.sub(r"\s+", " ", line.split(" #")[0]).strip()
    return Command(str(doc.relative_to(ROOT)), text, argv, local)


COMMANDS = [command for doc in DOCS for command in commands_of(doc)]


# -- the programs and their parsers ----------------------------------------------------------


@functools.cache
def load(script: str) -> ModuleType:
    """A program of the repository as a module (its __main__ part does not run)."""
    path = ROOT / script
    spec = importlib.util.spec_from_file_location("doc_" + script.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(script: str) -> argparse.ArgumentParser:
    """The program's parser: its build_parser(), else the one its parse_args() or
    main() builds, caught at the moment it would parse (nothing else runs)."""
    if script == "train.py":
        return config.build_parser()
    module = load(script)
    if hasattr(module, "build_parser"):
        return module.build_parser()
    entry = getattr(module, "parse_args", None) or module.main

    def caught(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Built(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught):
        try:
            entry([]) if inspect.signature(entry).parameters else entry()
        except _Built as built:
            return built.parser
    raise AssertionError(f"{script} built no parser")


def parse(script: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` as the program reads it, with its checks between flags; SystemExit
    (argparse's exit 2) when a flag is wrong."""
    if script == "train.py":
        return config.parse_args(argv)
    if script in ("evaluate.py", "predict.py"):
        return config.parse_scoring_args(load(script).build_parser(), argv)
    if script == "scripts/run_protocol.py":
        module = load(script)
        args = module.parse_args(argv)
        module.check_train_flags(args.train_flags)  # the runner's own flags stay before --
        config.parse_args(args.train_flags)
        return args
    module = load(script)
    if hasattr(module, "parse_args"):
        return module.parse_args(argv)
    return parser_of(script).parse_args(argv)


def module_script(name: str) -> str:
    """``python -m hyperiqa.check_data`` -> hyperiqa/check_data.py."""
    return name.replace(".", "/") + ".py"


@functools.cache
def make_targets() -> dict[str, list[str]]:
    """The Makefile's targets and their recipe lines."""
    targets: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([\w.-]+)\s*:(?!=)", line)
        if match:
            current = targets.setdefault(match[1], [])
        elif line.startswith("\t"):
            current.append(line.strip())
    return targets


GPU_CHECK_ARGUMENTS = re.compile(r"--plan|--help|-h|\d+(\.\d+)?")  # see its header


class Unrunnable(Exception):
    """A documented command that cannot run as printed; the message says why."""


@dataclass
class Checked:
    """What a command runs: the repository program and the flags it is given."""

    script: str | None  # None: a make target or a shell script without a parser
    argv: list[str]


def what_runs(command: Command) -> Checked | None:
    """The program a documented command runs and its flags; None for other tools'
    commands. Unrunnable for a command that cannot run, or that this test cannot check."""
    program, *rest = command.argv
    if program in ("python", "python3"):
        if rest[:1] == ["-c"]:
            return None
        if rest[:1] == ["-m"]:
            return Checked(module_script(rest[1]), rest[2:])
        return Checked(rest[0], rest[1:])
    if program == "bash" or program.startswith("./"):
        script = (rest[0] if program == "bash" else program[2:]).removeprefix("./")
        args = rest[1:] if program == "bash" else rest
        if not (ROOT / script).is_file():
            raise Unrunnable(f"{command}: no {script} in the repository")
        if script == "scripts/train.sh":
            return Checked("train.py", train_sh_flags(args))
        if script == "scripts/gpu_check.sh":
            bad = [a for a in args if not GPU_CHECK_ARGUMENTS.fullmatch(a)]
            if bad or len(args) > 1:
                raise Unrunnable(f"{command}: gpu_check.sh takes one of --plan, --help, SECONDS")
        return Checked(None, args)
    if program == "torchrun":
        from torch.distributed.run import get_args_parser

        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                launch = get_args_parser().parse_args(rest)  # torchrun's own flags
        except SystemExit:
            raise Unrunnable(f"{command}: {last_line(errors)}") from None
        return Checked(launch.training_script, launch.training_script_args)
    if program == "make":
        missing = [target for target in rest if target not in make_targets()]
        if missing:
            raise Unrunnable(f"{command}: no make target {', '.join(missing)}")
        return Checked(None, rest)
    if program not in OTHER_TOOLS:
        raise Unrunnable(f"{command}: no check for {program!r} in this test; add one")
    return None


def last_line(errors: io.StringIO) -> str:
    return (errors.getvalue().strip().splitlines() or ["(no message)"])[-1]


def train_sh_flags(args: list[str]) -> list[str]:
    """train.sh's flags for train.py: all but --gpus N (torchrun's process count)."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--gpus":
            if i + 1 == len(args) or not args[i + 1].isdigit():
                raise Unrunnable(f"train.sh --gpus needs a number: {args}")
            skip = True
        elif not arg.startswith("--gpus="):
            out.append(arg)
    return out


def training_commands() -> list[list[str]]:
    """The train.py flags of every documented command that trains, make's included."""
    runs = []
    for command, checked in checked_commands()[0]:
        if checked.script == "train.py":
            runs.append(checked.argv)
        if command.argv[0] == "make":
            for target in checked.argv:
                for recipe in make_targets()[target]:
                    words = shlex.split(recipe)
                    if "train.py" in words:
                        runs.append(words[words.index("train.py") + 1 :])
    return runs


@functools.cache
def documented_run_folders() -> set[str]:
    """The folders under ../checkpoints that the documented commands train into:
    train.py's (the name its flags give) and run_protocol.py's --out. A command
    that does not parse is left out (test_every_documented_command_parses names it)."""
    folders = set()
    quiet = contextlib.redirect_stderr(io.StringIO())
    for argv in training_commands():
        with contextlib.suppress(SystemExit), quiet:
            run = PurePosixPath(config.run_dir(config.parse_args(argv)).as_posix())
            if run.parent == CHECKPOINTS:
                folders.add(run.name)
    for _, checked in checked_commands()[0]:
        if checked.script == "scripts/run_protocol.py":
            with contextlib.suppress(SystemExit), quiet:
                out = PurePosixPath(str(load(checked.script).parse_args(checked.argv).out))
                if out.parent == CHECKPOINTS:
                    folders.add(out.name)
    return folders


def checked_commands() -> tuple[list[tuple[Command, Checked]], list[str]]:
    """The commands of the repository's programs with what they run, and the
    problems of those that cannot run as printed."""
    pairs, problems = [], []
    for command in COMMANDS:
        try:
            checked = what_runs(command)
        except Unrunnable as e:
            problems.append(str(e))
            continue
        if checked is not None:
            pairs.append((command, checked))
    return pairs, problems


# -- the tests -------------------------------------------------------------------------------


def test_the_docs_show_commands_of_every_kind() -> None:
    """The extraction works: a change to it that silently finds nothing fails here."""
    pairs, _ = checked_commands()
    scripts = {checked.script for _, checked in pairs}
    assert len(pairs) >= 30, [str(c) for c, _ in pairs]
    assert {"train.py", "evaluate.py", "predict.py", "scripts/run_protocol.py"} <= scripts
    assert {"scripts/compare_runs.py", "scripts/plot_metrics.py", "bench/throughput.py"} <= scripts
    assert any(c.argv[0] == "torchrun" for c, _ in pairs)
    assert any(c.argv[0] == "make" for c, _ in pairs)


def test_every_documented_command_parses() -> None:
    pairs, problems = checked_commands()
    for command, checked in pairs:
        if checked.script is None:
            continue
        if not (ROOT / checked.script).is_file():
            problems.append(f"{command}: no {checked.script} in the repository")
            continue
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                parse(checked.script, checked.argv)
        except SystemExit:
            problems.append(f"{command}: {last_line(errors)}")
        except Exception as e:  # a check between flags that is not argparse's (run_protocol)
            problems.append(f"{command}: {type(e).__name__}: {e}")
    assert problems == []


def repository_paths(words: list[str]) -> list[str]:
    """The words (or the FILE of NAME=FILE) that name a path inside the repository:
    its first part is one of the repository's top-level entries."""
    top = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    paths = []
    for word in words:
        for candidate in (word, word.partition("=")[2]):
            parts = PurePosixPath(candidate).parts
            if candidate and len(parts) > 1 and parts[0] in top:
                paths.append(candidate)
    return paths


def test_the_paths_commands_name_exist() -> None:
    problems = []
    for command in COMMANDS:
        for path in repository_paths(command.argv[1:]):
            if not list(ROOT.glob(path.rstrip("/"))):
                problems.append(f"{command}: {path} is not in the repository")
    assert problems == []


def test_run_folders_named_in_commands_are_ones_the_docs_train() -> None:
    """A glob such as ../checkpoints/lr1e-4_* must catch a folder a documented
    command makes (the demo's is demo_lr1e-4_...)."""
    made = documented_run_folders()
    assert "demo_lr1e-4_bs16_ep4_val0.333_seed42" in made  # make demo's, through the Makefile
    problems = []
    for command in COMMANDS:
        words = [*command.argv, *command.variables.values()]
        for word in words:
            path = PurePosixPath(word)
            if path.parts[:2] == CHECKPOINTS.parts and len(path.parts) > 2:
                name = path.parts[2]
                if not fnmatch.filter(made, name):
                    problems.append(f"{command}: {CHECKPOINTS / name} is none of {sorted(made)}")
    assert problems == []


def test_demo_images_named_are_ones_the_demo_writes() -> None:
    names = {demo_file_name(i, *step) for i, step in enumerate(demo_plan(DEMO_NUM_IMAGES))}
    named = [
        (command, PurePosixPath(word))
        for command in COMMANDS
        for word in command.argv
        if PurePosixPath(word).parent == DEMO_IMAGES
    ]
    assert named  # the quick start scores two of them
    assert [f"{c}: {p.name}" for c, p in named if p.name not in names] == []


def slug(heading: str) -> str:
    """A heading's #anchor as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_relative_links_resolve() -> None:
    problems = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                problems.append(f"{doc.name}: {target}: no such file")
            elif anchor and anchor not in anchors(linked):
                problems.append(f"{doc.name}: {target}: no heading #{anchor} there")
    assert problems == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {Path(t.partition("#")[0]).name for t in re.findall(r"\]\((docs/[^)\s]+)\)", readme)}
    assert sorted(p.name for p in DOCS[1:] if p.name not in linked) == []


def inline_code(doc: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", text)


def test_paths_in_inline_code_exist() -> None:
    """`hyperiqa/scorer.py`, `scripts/gpu_check.sh`, `tests/data/`: the files the text names."""
    problems = []
    for doc in DOCS:
        for span in inline_code(doc):
            if " " not in span:
                problems += [
                    f"{doc.name}: `{span}`"
                    for path in repository_paths([span])
                    if not list(ROOT.glob(path.rstrip("/")))
                ]
    assert problems == []


@functools.cache
def known_flags() -> set[str]:
    """Every flag of the repository's programs, and the other tools' the docs mention."""
    scripts = ["train.py", "evaluate.py", "predict.py", "hyperiqa/check_data.py"]
    scripts += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "scripts").glob("*.py"))]
    scripts += ["bench/throughput.py"]
    flags = set(OTHER_FLAGS) | {"--gpus", "--plan"}  # train.sh's and gpu_check.sh's own
    for script in scripts:
        module = load(script) if script != "train.py" else None
        if module is not None and not hasattr(module, "main"):
            continue
        if script == "scripts/gpu_check.py":  # subcommands as words, no flags
            continue
        parser = parser_of(script)
        flags |= {o for a in parser._actions for o in a.option_strings}
        for sub in parser._actions:
            if isinstance(sub, argparse._SubParsersAction):
                for p in sub.choices.values():
                    flags |= {o for a in p._actions for o in a.option_strings}
    return flags


def test_flags_in_inline_code_exist() -> None:
    problems = []
    for doc in DOCS:
        for span in inline_code(doc):
            for flag, star in re.findall(r"(?<![\w-])(--[a-z][\w-]*)(\*?)", span):
                # `--dali_*`: the flags that start so
                if not (
                    flag in known_flags()
                    or (star and any(known.startswith(flag) for known in known_flags()))
                ):
                    problems.append(f"{doc.name}: `{span}`: {flag}{star}")
    assert problems == []


def test_the_flag_table_lists_exactly_train_py_s_flags() -> None:
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    table = text[text.index("## Flags of `train.py`") : text.index("## The learning-rate")]
    listed = re.findall(r"^\| `(--[\w]+)", table, flags=re.M)
    actual = [o for a in config.build_parser()._actions for o in a.option_strings]
    assert sorted(listed) == sorted(o for o in actual if o.startswith("--") and o != "--help")
