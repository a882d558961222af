"""Progress bars: shown on a terminal when wanted, never in a log file."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm import tqdm


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    show: bool = True,
) -> tqdm:
    """A tqdm bar that goes away when done. ``show=False`` turns it off; otherwise
    it appears only when stderr is a terminal (tqdm's ``disable=None``), so a
    redirected run gets its log lines without bar residue."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        dynamic_ncols=True,
        disable=None if show else True,
    )
