"""Every runtime decision, made once: device, processes, precision, memory layout,
cuDNN autotuning, compilation, loader, workers and the per-process batch.

``resolve_runtime`` turns the user's requests (``auto`` values included) into
one frozen ``Runtime``; training, evaluate.py, predict.py, the ``Scorer`` and
the benchmark all take that object instead of deciding again. It also applies
what it decides to the model and its inputs (``prepare_model``, ``autocast``,
``prepare_input``), so "how does this run compute" has one answer in one file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch

from hyperiqa.distributed import DistInfo, init_distributed
from hyperiqa.errors import UserError
from pipelines.factory import DALI_PACKAGES, dali_available
from pipelines.loader import LoaderSettings

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_NAMES = {dtype: name for name, dtype in AMP_DTYPES.items()}

DALI_MISSING = (
    f"--loader dali needs NVIDIA DALI, which is not installed: pip install {DALI_PACKAGES}; "
    "or use --loader pillow, which needs nothing more"
)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: torch.dtype | None  # autocast dtype on CUDA; None: fp32 throughout
    channels_last: bool  # NHWC activations (CUDA only: cuDNN's fastest kernels)
    loader: str  # "pillow", "dali" or "synthetic"
    loader_reason: str  # one line for the log: which loader and why
    num_workers: int  # Pillow decode processes
    batch_per_rank: int  # patches per step in this process (--batch_size / world size)
    # cuDNN's autotuner (torch.backends.cudnn.benchmark): on by default on CUDA,
    # off with --no_cudnn_benchmark, always off on the CPU. Set by apply_backend_flags.
    cudnn_benchmark: bool = False
    compile: bool = False  # torch.compile the training step
    dist: DistInfo = field(default_factory=DistInfo)
    dali_threads: int = 4  # DALI CPU threads (file reading; decoding too on the CPU backend)
    dali_hw_decoder_load: float = 0.65  # share of JPEGs for the hardware decoder (A100/H100)
    dali_prefetch: int = 2  # windows DALI decodes ahead of training

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp_name(self) -> str:
        """The --amp spelling of the precision, as args.json records it."""
        return AMP_NAMES.get(self.amp, "off")

    @property
    def input_dtype(self) -> torch.dtype:
        """What loaders deliver: half the bytes under autocast (the convolutions
        run in bf16/fp16 anyway), fp32 when the model runs in fp32."""
        return torch.float16 if self.amp is not None else torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision of a forward pass; a no-op in fp32."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        # channels_last lets cuDNN pick its fastest (NHWC tensor-core) kernels.
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def apply_backend_flags(self) -> None:
        """Set the process-wide backend switches this runtime decided (the one place).

        cudnn.benchmark times cuDNN's algorithms for each new input shape once and
        keeps the fastest: a training run feeds one shape (batch x 3 x 224 x 224)
        thousands of times, plus a short last batch and the validation batches, so
        the few timed first steps pay off at once. Its price: the chosen algorithms
        may differ between runs, so CUDA runs are not bit-reproducible (cuDNN's
        backward pass already is not); --no_cudnn_benchmark turns it off.
        """
        if self.device.type == "cuda":  # the CPU never reads it: leave the caller's value
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on this runtime's device and layout; also applies the backend flags,
        since everything that computes with a model (training, evaluation, predict, the
        benchmark) passes here first."""
        self.apply_backend_flags()
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def loader_settings(self, resize: tuple[int, int]) -> LoaderSettings:
        return LoaderSettings(
            resize=resize,
            batch_size=self.batch_per_rank,
            device=self.device,
            dtype=self.input_dtype,
            num_workers=self.num_workers,
            dali_threads=self.dali_threads,
            dali_hw_decoder_load=self.dali_hw_decoder_load,
            dali_prefetch=self.dali_prefetch,
        )


def resolve_runtime(
    *,
    device: str = "auto",
    amp: str | None = None,
    loader: str = "auto",
    num_workers: int | None = None,
    batch_size: int,
    channels_last: bool = True,
    cudnn_benchmark: bool = True,
    compile: bool = False,
    distributed: bool = False,
    dali_threads: int = 4,
    dali_hw_decoder_load: float = 0.65,
    dali_prefetch: int = 2,
) -> Runtime:
    """Decide how this process computes. ``amp=None`` means the default (bf16
    on CUDA); ``batch_size`` is the global batch, split evenly over ranks;
    ``cudnn_benchmark`` applies on CUDA only. ``distributed``: join the process
    group when torchrun started this process (a library object such as the
    Scorer never does)."""
    dev = resolve_device(device)
    dist = init_distributed(dev.type) if distributed else DistInfo()
    if dev.type != "cuda" and amp in AMP_DTYPES:
        raise UserError(f"--amp {amp} needs CUDA; on the CPU training runs in fp32")
    if dev.type == "cuda" and dist.enabled:
        dev = torch.device("cuda", dist.local_rank)
    kind, reason = choose_loader(loader, dev)
    cuda = dev.type == "cuda"
    return Runtime(
        device=dev,
        amp=AMP_DTYPES[amp or "bf16"] if cuda and amp != "off" else None,
        channels_last=channels_last and cuda,
        loader=kind,
        loader_reason=reason,
        num_workers=default_workers(dev) if num_workers is None else num_workers,
        batch_per_rank=per_rank_batch(batch_size, dist),
        cudnn_benchmark=cudnn_benchmark and cuda,
        compile=compile,
        dist=dist,
        dali_threads=dali_threads,
        dali_hw_decoder_load=dali_hw_decoder_load,
        dali_prefetch=dali_prefetch,
    )


def resolve_device(requested: str) -> torch.device:
    """``--device auto|cuda|cpu`` -> the device used; cuda without a GPU is the user's error."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
    if requested == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    return torch.device(requested)


def choose_loader(requested: str, device: torch.device) -> tuple[str, str]:
    """``--loader auto|pillow|dali|synthetic`` -> a concrete loader and a line saying why."""
    if requested in ("pillow", "synthetic"):
        return requested, f"loader: {requested} (as requested)"
    has_dali = dali_available()
    if requested == "dali":
        if not has_dali:
            raise UserError(DALI_MISSING)
        backend = "GPU" if device.type == "cuda" else "CPU"
        return "dali", f"loader: dali on the {backend} backend"
    if requested != "auto":
        raise UserError(f"--loader must be auto, pillow or dali, got {requested!r}")
    if device.type == "cuda" and has_dali:
        return "dali", "loader: dali on the GPU backend (auto: CUDA and DALI present)"
    why = "no CUDA device in use" if device.type != "cuda" else "DALI not installed"
    return "pillow", f"loader: pillow (auto: {why})"


def default_workers(device: torch.device) -> int:
    """Pillow decode processes when --num_workers is not given.

    On a GPU the CPU only feeds it: use the cores (at most 8). On the CPU the
    model needs both cores and decoding once per image costs about 0.6 ms per
    patch against some 200 ms of ResNet-50 work: a worker process only adds
    transfer cost and a forked copy of the trainer's memory (measured with
    bench/throughput.py --worker_sweep 0,1,2 on 2 cores: 0 workers was fastest).
    """
    if device.type != "cuda":
        return 0
    return min(usable_cores(), 8)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS has one),
    not the host's: the default of every worker count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def per_rank_batch(batch_size: int, dist: DistInfo) -> int:
    """--batch_size is the global batch; each rank takes an equal part."""
    if batch_size % dist.world_size:
        raise UserError(
            f"--batch_size {batch_size} does not divide evenly over {dist.world_size} "
            f"processes; use a multiple of {dist.world_size}"
        )
    return batch_size // dist.world_size
