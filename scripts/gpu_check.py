"""The Python side of scripts/gpu_check.sh: its preflight, and what the steps need.

    python scripts/gpu_check.py preflight       # $WORK and GPU_CHECK_STANDIN from the script
    python scripts/gpu_check.py gpu-test-files  # the test files holding gpu-marked tests

The preflight checks in one pass everything a later step would trip over, and
names all of it in one line: every third-party module those steps import (found
by reading their import statements, see :func:`required_modules`), that DALI's
image decoder loads the libnvjpeg of DALI's CUDA major version, and (on a GPU
machine) that torch sees a CUDA device.

Only the standard library is imported at module level, so that this runs, and
says what is missing, where nothing else imports.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import io
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where the steps' own imports resolve: the repository root and bench/ (whose
# scripts import their siblings by name; pytest's pythonpath holds it too).
SEARCH_PATH = (ROOT, ROOT / "bench")
# The files the steps after the preflight start from; the tests step adds the
# test files it selects (gpu_test_files).
STEP_ENTRY_POINTS = (
    "scripts/gpu_smoke.py",  # smoke
    "tests/conftest.py",  # tests
    "bench/throughput.py",  # bench
    "scripts/make_demo_dataset.py",  # train: the demo dataset
    "train.py",  # train
)
# Imported inside functions the steps run (the model's ImageNet weights, this
# preflight's version report), which reading module-level imports misses.
EXTRA_MODULES = ("torchvision", "nvidia.dali.backend")

DALI_HINT = "install nvidia-dali-cuda120 (driver >= 525.60) or nvidia-dali-cuda130 (driver >= 580)"
PYTEST_HINT = "bash scripts/stage_test_wheels.sh stages pytest into .devwheels/extra"
# Namespaces many wheels share: a missing one is named by the package under it.
NAMESPACES = ("nvidia",)
NVJPEG_WHEEL = {12: "nvidia-nvjpeg-cu12", 13: "nvidia-nvjpeg"}  # what nvImageCodec pulls in


# -- what the steps import ------------------------------------------------------------------


def has_gpu_marks(path: Path) -> bool:
    """Does this test file use ``pytest.mark.gpu`` (or ``mark.gpu``) anywhere?

    Read, not imported: a module that skips while being collected never shows its
    tests. A file that does not parse counts as holding gpu tests."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return True
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "gpu"
        and isinstance(node.value, ast.Attribute | ast.Name)
        and getattr(node.value, "attr", getattr(node.value, "id", None)) == "mark"
        for node in ast.walk(tree)
    )


def gpu_test_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / "tests").glob("test_*.py") if has_gpu_marks(p))


def _module_level_imports(path: Path) -> list[tuple[str, bool]]:
    """``(dotted name, is a module)`` for each import of the module body itself: not
    inside a function, a ``try`` (an optional import) or an ``if`` (TYPE_CHECKING).
    ``from a import b`` gives ``("a", True)`` and ``("a.b", False)``: b may be a module."""
    names: list[tuple[str, bool]] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names += [(alias.name, True) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.module, True))
            names += [(f"{node.module}.{alias.name}", False) for alias in node.names]
    return names


def _local_file(name: str) -> Path | None:
    """The repository file that ``import name`` runs, if it is one of ours."""
    for base in SEARCH_PATH:
        path = base.joinpath(*name.split("."))
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
    return None


def required_modules(entry_points: Iterable[str | Path]) -> list[str]:
    """Every third-party module imported at module level by the entry points and by
    the repository modules they import, transitively; the standard library left out."""
    todo = [ROOT / p for p in entry_points]
    seen: set[Path] = set()
    found: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name, is_module in _module_level_imports(path):
            parts = name.split(".")
            local = [_local_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
            if local[0] is not None:  # ours: follow it (and the packages on its way)
                todo += [p for p in local if p is not None]
            elif is_module and parts[0] not in sys.stdlib_module_names:
                found.add(name)
    return sorted(found)


def import_problems(names: Iterable[str]) -> list[str]:
    """Import each module; for each one that fails, its shortest failing dotted
    prefix and why (``"nvidia.dali (not installed)"``), each named once."""
    failed: dict[str, str] = {}
    for name in sorted(set(names)):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in failed:
                break
            try:
                importlib.import_module(prefix)
            except Exception as e:  # not installed, or a library that does not load
                if prefix in NAMESPACES and len(parts) > i:
                    prefix = f"{prefix}.{parts[i]}"  # name the package, not the namespace
                missing = isinstance(e, ModuleNotFoundError) and e.name in (prefix, parts[0])
                failed[prefix] = "not installed" if missing else _short(e)
                break
    return [f"{name} ({why})" for name, why in failed.items()]


def _short(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:160]}"


# -- libnvjpeg through DALI -----------------------------------------------------------------


def loaded_nvjpeg(maps: str) -> dict[int, str]:
    """The libnvjpeg libraries mapped into a process, by major version, from the
    text of ``/proc/PID/maps``."""
    found: dict[int, str] = {}
    for line in maps.splitlines():
        match = re.search(r"(\S*/)?libnvjpeg\.so\.(\d+)\S*$", line)
        if match:
            found.setdefault(int(match.group(2)), line.split()[-1])
    return found


def nvjpeg_problem(maps: str, cuda_major: int) -> str | None:
    """None when the libnvjpeg of DALI's CUDA major version is loaded, else what is wrong."""
    found = loaded_nvjpeg(maps)
    if cuda_major in found:
        return None
    others = ", ".join(f"libnvjpeg.so.{major}" for major in sorted(found)) or "none"
    wheel = NVJPEG_WHEEL.get(cuda_major, "the nvJPEG wheel for its CUDA version")
    return (
        f"DALI's image decoder did not load libnvjpeg.so.{cuda_major} (loaded: {others}); "
        f"the DALI build for CUDA {cuda_major} needs {wheel} (pip installs it with DALI), "
        "without it the GPU decoder is missing or falls back to the CPU"
    )


def check_nvjpeg(cuda_major: int) -> tuple[str | None, str]:
    """Build and run DALI's image decoder once (CPU backend: no GPU needed, and it
    loads nvImageCodec's nvJPEG extension all the same), then look at what the
    process has mapped. Returns (problem or None, a line for the report)."""
    import numpy as np
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline
    from PIL import Image

    jpeg = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(jpeg, format="JPEG")
    data = np.frombuffer(jpeg.getvalue(), dtype=np.uint8)
    pipe = Pipeline(batch_size=1, num_threads=1, device_id=None)
    with pipe:
        encoded = fn.external_source(source=lambda: [data], batch=True, dtype=types.UINT8)
        pipe.set_outputs(fn.decoders.image(encoded, device="cpu", output_type=types.RGB))
    pipe.build()
    pipe.run()
    maps = Path("/proc/self/maps").read_text()
    del pipe
    problem = nvjpeg_problem(maps, cuda_major)
    found = loaded_nvjpeg(maps)
    line = f"libnvjpeg: {found.get(cuda_major, 'NOT LOADED')} (loaded by DALI's image decoder)"
    return problem, line


# -- the preflight --------------------------------------------------------------------------


def _cuda_version(v: int) -> str:  # cudaDriverGetVersion's encoding: 1000 * major + 10 * minor
    return f"{v // 1000}.{v % 1000 // 10}" if v > 0 else "none"


def _dali_dist() -> str:
    for name in ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            pass
    return "package name unknown"


def _smi(query: str) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def preflight(work: Path, standin: bool) -> int:
    """Exit status 0 and ``work/versions.txt`` written, or 1 and one line, also in
    ``work/fail_line.txt``, naming everything that is missing."""
    modules = [*required_modules([*STEP_ENTRY_POINTS, *gpu_test_files()]), *EXTRA_MODULES]
    print(f"modules the steps import: {', '.join(sorted(set(modules)))}")
    problems = []
    missing = import_problems(modules)
    if missing:
        hints = ["pip install -r requirements.txt"]
        if any(m.startswith("nvidia.dali") for m in missing):
            hints.insert(0, DALI_HINT)
        if any(m.startswith("pytest ") for m in missing):
            hints.append(PYTEST_HINT)
        problems.append(f"cannot import {', '.join(missing)} ({'; '.join(hints)})")
    failed = {m.split(" ")[0] for m in missing}

    def importable(*names: str) -> bool:
        return failed.isdisjoint(names)

    lines = []
    dali_cuda_major = 0
    if importable("nvidia.dali", "numpy", "PIL"):
        import nvidia.dali as dali

        dali_cuda_major = int(getattr(dali, "__cuda_version__", 0)) // 1000
        try:
            problem, line = check_nvjpeg(dali_cuda_major)
        except Exception as e:  # DALI cannot even run its CPU decoder
            problem, line = f"DALI's image decoder does not run ({_short(e)})", ""
        if problem:
            problems.append(problem)
        lines.append(line)

    cuda = False
    if importable("torch"):
        import torch

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
        for w in caught:
            print(f"warning while looking for CUDA: {w.message}")
        if not cuda and not standin:
            why = f"; {caught[0].message}" if caught else ""
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            problems.append(
                f"no CUDA device visible to torch {torch.__version__} (built for CUDA "
                f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={visible}){why}"
            )

    if problems:
        line = "FAIL preflight: " + "; ".join(problems)
        (work / "fail_line.txt").write_text(line + "\n")
        print(line)
        return 1
    lines = [*_versions(cuda, dali_cuda_major), *lines]
    (work / "versions.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _versions(cuda: bool, dali_cuda_major: int) -> list[str]:
    """The summary's version lines, and a warning where the driver is too old."""
    import nvidia.dali as dali
    import nvidia.dali.backend as dali_backend
    import torch
    import torchvision

    driver_cuda = dali_backend.GetCudaVersion() if cuda else 0  # what the driver supports
    lines = []
    if cuda:
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"device: {props.name} (sm_{props.major}{props.minor}, "
            f"{props.total_memory / 2**30:.1f} GiB), {torch.cuda.device_count()} visible; "
            f"driver {_smi('driver_version')} (supports CUDA {_cuda_version(driver_cuda)})"
        )
    else:
        lines.append(f"device: none (stand-in mode on {platform.machine()}, DALI's CPU backend)")
    lines.append(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}), torchvision {torchvision.__version__}"
    )
    codec = dali_backend.GetNvimgcodecVersion()  # e.g. 900 for 0.9.0
    lines.append(
        f"DALI {dali.__version__} ({_dali_dist()}, built for CUDA {dali_cuda_major}, "
        f"__cuda_version__ {getattr(dali, '__cuda_version__', '?')}; nvImageCodec "
        f"{codec // 1000}.{codec % 1000 // 100}.{codec % 100} ({codec}))"
    )
    lines.append(f"python {platform.python_version()}, {os.cpu_count()} CPU cores")
    if cuda:
        driver_major = driver_cuda // 1000
        torch_major = int((torch.version.cuda or "0").split(".")[0])
        for what, major in (("DALI", dali_cuda_major), ("torch", torch_major)):
            if major > driver_major:
                lines.append(
                    f"WARNING: {what} is built for CUDA {major} but the driver supports CUDA "
                    f"{_cuda_version(driver_cuda)} (CUDA 13 builds need driver >= 580; CUDA 12 "
                    "builds >= 525.60): expect the smoke step to fail"
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["preflight"]:
        return preflight(Path(os.environ["WORK"]), os.environ.get("GPU_CHECK_STANDIN") == "1")
    if args == ["gpu-test-files"]:
        print(" ".join(str(p.relative_to(ROOT)) for p in gpu_test_files()))
        return 0
    print("usage: python scripts/gpu_check.py preflight | gpu-test-files", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
