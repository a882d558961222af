"""HyperIQA (Su et al., CVPR 2020): train it, and score images with it.

    from hyperiqa import Scorer
    scores = Scorer("best_model.pkl").score(["a.jpg", "b.png"])

The public names are ``Scorer`` (load a checkpoint, score paths, PIL images or
tensors; ``Scorer.stream`` a collection of files as rows), ``HyperNet`` (the model, with the original release's state_dict
layout) and ``UserError`` (what a bad input raises). They are imported on
first use, so ``import hyperiqa`` and the light tools that use its torch-free
modules start instantly.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Scorer": "hyperiqa.scorer",
    "HyperNet": "hyperiqa.model",
    "UserError": "hyperiqa.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'hyperiqa' has no attribute {name!r}")
