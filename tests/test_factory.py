"""Loader selection, device resolution and the dtype loaders deliver."""

from __future__ import annotations

import pytest
import torch

from hyperiqa.errors import UserError
from pipelines import factory
from pipelines.factory import delivery_dtype, resolve_device, resolve_loader

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize(
    ("device", "amp", "dtype"),
    [
        (CUDA, "bf16", torch.float16),
        (CUDA, "fp16", torch.float16),
        (CUDA, "off", torch.float32),  # an fp32 model must get fp32 input
        (CPU, "off", torch.float32),
        (CPU, None, torch.float32),
    ],
)
def test_delivery_dtype_follows_amp(device: torch.device, amp: str | None, dtype) -> None:
    assert delivery_dtype(device, amp) == dtype


def test_cuda_without_a_gpu_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU


def test_auto_loader_picks_pillow_without_cuda_and_says_why() -> None:
    kind, note = resolve_loader("auto", CPU)
    assert kind == "pillow" and "no CUDA" in note


def test_dali_requested_on_cpu_runs_the_cpu_backend() -> None:
    if not factory.dali_available():
        pytest.skip("DALI not installed")
    kind, note = resolve_loader("dali", CPU)
    assert kind == "dali" and "CPU backend" in note


def test_dali_missing_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "dali_available", lambda: False)
    with pytest.raises(UserError, match=r"pip install nvidia-dali-cuda120.*--loader pillow"):
        resolve_loader("dali", CPU)
