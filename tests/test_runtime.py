"""hyperiqa.runtime: device, precision, loader and batch decided once; what loaders deliver."""

from __future__ import annotations

import sys

import pytest
import torch

from hyperiqa import runtime
from hyperiqa.distributed import DistInfo
from hyperiqa.errors import UserError
from hyperiqa.runtime import choose_loader, per_rank_batch, resolve_device, resolve_runtime
from pipelines.errors import LoaderError
from pipelines.factory import make_loader

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _cuda_runtime(amp: str | None) -> runtime.Runtime:
    """What resolve_runtime decides on a CUDA machine (the decision only; nothing runs there)."""
    return runtime.Runtime(
        device=CUDA,
        amp=runtime.AMP_DTYPES.get(amp or "bf16") if amp != "off" else None,
        channels_last=True,
        loader="pillow",
        loader_reason="",
        num_workers=0,
        batch_per_rank=8,
    )


@pytest.mark.parametrize(
    ("amp", "dtype", "name"),
    [
        ("bf16", torch.float16, "bf16"),
        ("fp16", torch.float16, "fp16"),
        ("off", torch.float32, "off"),  # an fp32 model must get fp32 input
        (None, torch.float16, "bf16"),  # the default on CUDA
    ],
)
def test_delivered_dtype_follows_amp_on_cuda(amp: str | None, dtype, name: str) -> None:
    rt = _cuda_runtime(amp)
    assert rt.input_dtype == dtype and rt.amp_name == name


def test_cpu_runs_fp32_nchw() -> None:
    rt = resolve_runtime(device="cpu", batch_size=4)
    assert rt.amp is None and rt.amp_name == "off" and rt.input_dtype == torch.float32
    assert not rt.channels_last and rt.num_workers == 0 and rt.batch_per_rank == 4
    assert rt.loader == "pillow" and "no CUDA" in rt.loader_reason
    rt = resolve_runtime(device="cpu", batch_size=4, dali_threads=3)
    settings = rt.loader_settings((64, 80))
    assert (
        settings.batch_size == 4 and settings.dtype == torch.float32 and settings.dali_threads == 3
    )


def test_amp_on_cpu_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--amp bf16 needs CUDA"):
        resolve_runtime(device="cpu", amp="bf16", batch_size=4)


def test_cuda_without_a_gpu_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU


def test_auto_loader_picks_pillow_without_cuda_and_says_why() -> None:
    kind, note = choose_loader("auto", CPU)
    assert kind == "pillow" and "no CUDA" in note


def test_dali_requested_on_cpu_runs_the_cpu_backend() -> None:
    if not runtime.dali_available():
        pytest.skip("DALI not installed")
    kind, note = choose_loader("dali", CPU)
    assert kind == "dali" and "CPU backend" in note


def test_dali_missing_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "dali_available", lambda: False)
    with pytest.raises(UserError, match=r"pip install nvidia-dali-cuda120.*--loader pillow"):
        choose_loader("dali", CPU)


def test_global_batch_must_divide_over_ranks() -> None:
    assert per_rank_batch(96, DistInfo(rank=0, world_size=4)) == 24
    with pytest.raises(UserError, match="--batch_size 96 does not divide evenly over 5"):
        per_rank_batch(96, DistInfo(rank=0, world_size=5))


def test_a_dali_that_does_not_load_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed for the wrong CUDA, DALI fails on import: a LoaderError, not a traceback."""
    monkeypatch.setitem(sys.modules, "pipelines.dali", None)  # import raises ImportError
    settings = resolve_runtime(device="cpu", batch_size=4).loader_settings((224, 224))
    with pytest.raises(LoaderError, match=r"DALI is installed but does not load .*--loader pillow"):
        make_loader("dali", [], settings)


def test_the_loader_choices_are_the_factory_s_loaders_plus_auto() -> None:
    from hyperiqa import arg_types
    from pipelines.factory import LOADERS

    assert ("auto", *LOADERS) == arg_types.LOADER_CHOICES
