"""Train HyperIQA: ``python train.py [flags]`` (``--help`` lists them all)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hyperiqa.config import parse_args
from hyperiqa.errors import UserError, report
from hyperiqa.train_run import run_training
from hyperiqa.trainer import Interrupted

EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by a signal"


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        run_training(cfg)
    except UserError as e:
        return report("train.py", e)
    except Interrupted:
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
