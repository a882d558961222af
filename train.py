"""Train HyperIQA: ``python train.py [flags]`` (``--help`` lists them all)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hyperiqa.config import parse_args
from hyperiqa.distributed import shutdown as shutdown_distributed
from hyperiqa.errors import UserError, report
from hyperiqa.train_run import run_training
from hyperiqa.trainer import Interrupted

EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by a signal"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_args(argv)
    try:
        # argv, not sys.argv: the resume command printed on a stop must repeat
        # the flags of this run, also when main() is called from Python.
        run_training(cfg, argv)
    except UserError as e:
        return report("train.py", e)
    except Interrupted:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        # Ctrl-C before the training loop took the signal over (data check,
        # model build): no epoch ran in this session, so there is nothing new to keep.
        print("train.py: interrupted during setup, before any epoch ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        shutdown_distributed()  # a no-op without torchrun
    return 0


if __name__ == "__main__":
    sys.exit(main())
