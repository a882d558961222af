"""scripts/gpu_check.sh without a GPU: its time budget, its one-pass preflight
(scripts/gpu_check.py), the smoke step's limits (scripts/gpu_smoke.py), the strict
switch that turns skipped gpu tests into failures, and a whole run in its CPU
stand-in mode. Also the GPU defaults the check exercises (cuDNN's autotuner and
the benchmark rows that measure it).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import throughput
from hyperiqa import runtime
from hyperiqa.config import parse_args
from hyperiqa.runtime import Runtime, resolve_runtime
from hyperiqa.spec import RESUME_MAY_CHANGE
from pipelines.factory import dali_available
from scripts import gpu_check
from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["preflight", "smoke", "tests", "bench", "train"]
OUT_FILES = {
    "summary.txt", "env.txt", "smoke.txt", "tests.txt", "bench.txt", "train.txt",
    "bench.json", "train_metrics.json",
}  # fmt: skip
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def run_check(
    out: Path, *args: str, timeout: float = 240, **env: str
) -> subprocess.CompletedProcess:
    """The check as a user runs it, with this interpreter first on PATH (as python3)."""
    bindir = out.parent / "bin"
    bindir.mkdir(exist_ok=True)
    python3 = bindir / "python3"
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    full_env = {**os.environ, "OUT": str(out), "PATH": f"{bindir}:{os.environ['PATH']}", **env}
    full_env.pop("HYPERIQA_GPU_STRICT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=out.parent,  # not the repository: the script finds it itself
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- the plan: the whole check in one 10-minute slot -----------------------------------------------------------


def test_steps_fit_one_device_call() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    limits = dict(re.findall(r"^step (\w+) limit=(\d+)s$", proc.stdout, re.M))
    assert list(limits) == STEPS
    grace = int(re.search(r"^kill grace: (\d+)s per step$", proc.stdout, re.M).group(1))
    total = sum(int(v) + grace for v in limits.values())
    assert total <= 540, proc.stdout  # a 10-minute call, with a minute for setting up
    assert f"time budget: {total}s of 540s" in proc.stdout


# -- preflight: one line, at once -------------------------------------------------------------


@needs_no_cuda
@pytest.mark.slow
def test_no_cuda_device_fails_at_once_with_one_line(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = run_check(tmp_path / "out")
    assert proc.returncode == 1
    assert time.monotonic() - start < 60  # imports only: nothing long runs
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAIL preflight: no CUDA device visible"), lines
    assert (tmp_path / "out" / "summary.txt").read_text().splitlines() == lines
    assert not (tmp_path / "out" / "tests.txt").exists()


@pytest.mark.slow
def test_missing_dali_fails_at_once_naming_both_packages(tmp_path: Path) -> None:
    # A sitecustomize that hides nvidia.dali, as on a machine without it.
    hide = tmp_path / "hide_dali"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['nvidia.dali'] = None\n")
    proc = run_check(tmp_path / "out", PYTHONPATH=str(hide), GPU_CHECK_STANDIN="1")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("FAIL preflight: cannot import nvidia.dali")
    assert "nvidia-dali-cuda120" in lines[0] and "nvidia-dali-cuda130" in lines[0]


@pytest.mark.slow
def test_preflight_names_everything_missing_in_one_line(tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nfor m in ('nvidia.dali', 'scipy', 'tqdm'):\n    sys.modules[m] = None\n"
    )
    proc = run_check(tmp_path / "out", PYTHONPATH=str(hide), GPU_CHECK_STANDIN="1")
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    assert line.startswith(
        "FAIL preflight: cannot import nvidia.dali (not installed), scipy (not installed), "
        "tqdm (not installed) ("
    ), line
    assert "nvidia-dali-cuda130" in line and "pip install -r requirements.txt" in line
    assert "Traceback" not in proc.stdout + proc.stderr


def path_without(program: str, tmp_path: Path) -> str:
    """PATH with ``program`` hidden: each folder holding it is replaced by a folder
    of links to everything else in it."""
    folders = []
    for i, folder in enumerate(os.environ["PATH"].split(os.pathsep)):
        if folder and (Path(folder) / program).exists():
            copy = tmp_path / f"path{i}"
            copy.mkdir()
            for entry in Path(folder).iterdir():
                if entry.name != program:
                    (copy / entry.name).symlink_to(entry)
            folder = str(copy)
        folders.append(folder)
    return os.pathsep.join(folders)


def _preflight_env_txt(tmp_path: Path, path: str) -> str:
    """env.txt of a preflight that fails fast (DALI hidden) with this PATH."""
    hide = tmp_path / "hide_dali"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['nvidia.dali'] = None\n")
    out = tmp_path / "out"
    proc = run_check(
        out, PYTHONPATH=str(hide), GPU_CHECK_STANDIN="1", PATH=f"{tmp_path / 'bin'}:{path}"
    )
    assert proc.returncode == 1 and "cannot import nvidia.dali" in proc.stdout, proc.stdout
    return (out / "env.txt").read_text()


@pytest.mark.slow
def test_env_txt_says_in_words_that_nvidia_smi_is_missing(tmp_path: Path) -> None:
    env_txt = _preflight_env_txt(tmp_path, path_without("nvidia-smi", tmp_path))
    assert "nvidia-smi: not found on PATH (it comes with the NVIDIA driver" in env_txt
    assert "command not found" not in env_txt and "line " not in env_txt, env_txt


@pytest.mark.slow
def test_env_txt_names_a_failing_nvidia_smi_s_exit_code(tmp_path: Path) -> None:
    fake = tmp_path / "fake_smi"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver'\nexit 9\n")
    smi.chmod(0o755)
    env_txt = _preflight_env_txt(tmp_path, f"{fake}:{os.environ['PATH']}")
    assert "NVIDIA-SMI has failed: no driver" in env_txt
    assert "nvidia-smi failed (exit code 9): the NVIDIA driver may not be loaded" in env_txt


def test_the_modules_checked_are_those_the_steps_import(tmp_path: Path) -> None:
    steps = [*gpu_check.STEP_ENTRY_POINTS, *gpu_check.gpu_test_files()]
    needed = set(gpu_check.required_modules(steps))
    assert {"torch", "numpy", "PIL", "scipy", "tqdm", "pytest", "nvidia.dali"} <= needed
    # Optional or used by no step: not required (test_tensorboard skips without it;
    # plot_metrics is imported only by a test module the tests step does not select).
    assert not {n for n in needed if n.split(".")[0] in {"tensorboard", "matplotlib", "openpyxl"}}
    assert not {n for n in needed if n.split(".")[0] in {"hyperiqa", "pipelines", "json", "os"}}
    # Only what the module body imports: not inside try, if or a function.
    (tmp_path / "entry.py").write_text(
        "import alpha.beta\nfrom gamma import delta\nimport os\n"
        "try:\n    import optional_one\nexcept ImportError:\n    pass\n"
        "if False:\n    import typing_only\n"
        "def f():\n    import lazy_one\n"
    )
    monkey_root = gpu_check.ROOT
    try:
        gpu_check.ROOT = tmp_path
        assert gpu_check.required_modules(["entry.py"]) == ["alpha.beta", "gamma"]
    finally:
        gpu_check.ROOT = monkey_root


def test_import_problems_name_the_shortest_failing_module_once() -> None:
    got = gpu_check.import_problems(
        ["json", "nvidia.no_such_pkg.sub", "nvidia.no_such_pkg", "no_such_top.a", "no_such_top.b"]
    )
    assert got == ["no_such_top (not installed)", "nvidia.no_such_pkg (not installed)"]


def test_the_gpu_test_files_are_found_by_reading_them(tmp_path: Path) -> None:
    files = {p.name for p in gpu_check.gpu_test_files()}
    assert {"test_dali.py", "test_dali_end_to_end.py", "test_batching.py"} <= files
    assert "test_tensorboard.py" not in files and "test_run_tools.py" not in files
    for source, marked in [
        ("import pytest\n@pytest.mark.gpu\ndef test_a(): pass\n", True),
        ("import pytest\npytestmark = [pytest.mark.gpu]\n", True),
        ("from pytest import mark\n@mark.gpu\ndef test_a(): pass\n", True),
        (
            "import pytest\n# pytest.mark.gpu in a comment\n@pytest.mark.slow\ndef test_a(): pass\n",
            False,
        ),
        ("def broken(:\n", True),  # cannot tell: counts as holding gpu tests
    ]:
        path = tmp_path / "test_x.py"
        path.write_text(source)
        assert gpu_check.has_gpu_marks(path) is marked, source


MAPS = """7f0000000000-7f0000100000 r-xp 00000000 08:01 1 /usr/lib/libc.so.6
7f0000200000-7f0000300000 r-xp 00000000 08:01 2 /venv/nvidia/nvjpeg/lib/libnvjpeg.so.12
7f0000300000-7f0000400000 r--p 00100000 08:01 2 /venv/nvidia/nvjpeg/lib/libnvjpeg.so.12
"""


def test_nvjpeg_of_dali_s_cuda_major_must_be_loaded() -> None:
    assert gpu_check.loaded_nvjpeg(MAPS) == {12: "/venv/nvidia/nvjpeg/lib/libnvjpeg.so.12"}
    assert gpu_check.nvjpeg_problem(MAPS, 12) is None
    wrong = gpu_check.nvjpeg_problem(MAPS, 13)  # the cuda130 build with the CUDA 12 library
    assert "libnvjpeg.so.13" in wrong and "loaded: libnvjpeg.so.12" in wrong
    assert "nvidia-nvjpeg " in wrong and "\n" not in wrong
    none = gpu_check.nvjpeg_problem("7f00-7f01 r-xp 0 0:0 1 /usr/lib/libc.so.6\n", 12)
    assert "loaded: none" in none and "nvidia-nvjpeg-cu12" in none


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_dali_loads_its_libnvjpeg_on_this_machine() -> None:
    import nvidia.dali as dali

    major = int(dali.__cuda_version__) // 1000
    problem, line = gpu_check.check_nvjpeg(major)
    assert problem is None, problem
    assert f"libnvjpeg.so.{major} (loaded by DALI's image decoder)" in line


# -- the smoke step's limits -----------------------------------------------------------------


def _smoke_with(monkeypatch, tmp_path: Path, spoil) -> tuple[int, str]:
    """Run the stand-in smoke step with its device-under-test run spoiled by ``spoil``."""
    from scripts import gpu_smoke

    real = gpu_smoke.deliver
    calls = []

    def deliver(paths, plan, device, dtype, batch):
        calls.append(dtype)
        if len(calls) == 2:  # the first call is the float32 reference
            return spoil(real, paths, plan, device, dtype, batch)
        return real(paths, plan, device, dtype, batch)

    monkeypatch.setattr(gpu_smoke, "deliver", deliver)
    rc = gpu_smoke.main(["--work", str(tmp_path), "--standin"])
    assert calls == [torch.float32, torch.float16]  # the dtype training feeds under autocast
    return rc, (tmp_path / "smoke.note").read_text().strip()


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
@pytest.mark.slow
def test_smoke_passes_unspoiled_and_fails_on_a_crop_one_pixel_off(monkeypatch, tmp_path) -> None:
    rc, note = _smoke_with(monkeypatch, tmp_path / "fine", lambda real, *a: real(*a))
    assert rc == 0 and note.endswith("image order identical"), note

    def shifted(real, paths, plan, device, dtype, batch):
        room = 512 - 224
        lefts = np.where(plan.lefts < room, plan.lefts + 1, plan.lefts - 1)
        return real(paths, dataclasses.replace(plan, lefts=lefts), device, dtype, batch)

    rc, note = _smoke_with(monkeypatch, tmp_path / "shifted", shifted)
    assert rc == 1
    assert "a patch's mean |diff| over 2.0" in note, note


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_smoke_max_limit_catches_what_the_mean_dilutes(monkeypatch, tmp_path) -> None:
    """A 16x16 block 100 grey levels off in one patch moves that patch's mean by 0.5
    only: the max limit is what fails it."""

    def spoiled(real, *args):
        batches, took = real(*args)
        batches[1].images[3, :, 100:116, 50:66] += 100 / (255 * 0.229)
        return batches, took

    rc, note = _smoke_with(monkeypatch, tmp_path, spoiled)
    assert rc == 1
    assert note.endswith("; max |diff| over 16.0"), note
    assert "mean |diff| over" not in note


# -- the strict switch: a skipped gpu test fails ---------------------------------------------

PROBE = """
import pytest

@pytest.mark.gpu
def test_gpu_skips_itself():
    pytest.skip("pretending the device is missing")

@pytest.mark.gpu
def test_gpu_runs():
    pass

def test_plain_skip():
    pytest.skip("not a gpu test: may skip")
"""

PROBE_MODULE_SKIP = """
import pytest
pytest.importorskip("no_such_module_for_the_probe")

@pytest.mark.gpu
def test_never_collected():
    pass
"""


# A module without gpu tests that skips while collecting (as tests/test_tensorboard.py
# does without tensorboard): no business of a GPU check.
PROBE_PLAIN_MODULE_SKIP = """
import pytest
pytest.importorskip("no_such_module_for_the_probe")

def test_never_collected():
    pass
"""

PROBE_PASSES = """
def test_passes():
    pass
"""

ALL_PROBES = {
    "test_probe.py": PROBE,
    "test_probe_module_skip.py": PROBE_MODULE_SKIP,
    "test_probe_plain_module_skip.py": PROBE_PLAIN_MODULE_SKIP,
}


def _run_probe(
    tmp_path: Path, strict: bool, probes: dict[str, str] = ALL_PROBES
) -> subprocess.CompletedProcess:
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    for name, source in probes.items():
        (probe / name).write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYPERIQA_GPU_STRICT", None)
    if strict:
        env["HYPERIQA_GPU_STRICT"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest"]
    cmd += ["--rootdir", str(probe), "--continue-on-collection-errors", "-W", "ignore", str(probe)]
    return subprocess.run(cmd, cwd=probe, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_skipped_gpu_tests_pass_quietly_without_the_switch(tmp_path: Path) -> None:
    proc = _run_probe(tmp_path, strict=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "strict gpu run" not in proc.stdout


@pytest.mark.slow
def test_skipped_gpu_tests_fail_under_the_switch(tmp_path: Path) -> None:
    proc = _run_probe(tmp_path, strict=True)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"(FAILED|ERROR) test_probe.py::test_gpu_skips_itself", out), out
    assert "gpu test skipped under HYPERIQA_GPU_STRICT=1" in out
    # A module with gpu tests skipped while collecting: an error too; one without
    # gpu tests may skip.
    assert "ERROR test_probe_module_skip.py" in out
    assert "ERROR test_probe_plain_module_skip.py" not in out
    # A plain (not gpu-marked) test may still skip: it is not reported.
    assert "test_plain_skip" not in out
    # The counting line the check copies into its summary.
    (line,) = [x for x in out.splitlines() if x.startswith("strict gpu run:")]
    ran_gpu = 0 if not torch.cuda.is_available() else 1  # test_gpu_runs needs CUDA to run
    assert line.startswith(f"strict gpu run: {ran_gpu} tests ran, {ran_gpu} of them gpu-marked")
    assert f"{3 - ran_gpu} skipped" in line


@pytest.mark.slow
def test_a_module_without_gpu_tests_may_skip_under_the_switch(tmp_path: Path) -> None:
    """What made the first GPU run fail (1 passed, 1 error): a module-level skip in a
    module that holds no gpu test. Under the switch it is a plain skip."""
    probes = {
        "test_probe_plain_module_skip.py": PROBE_PLAIN_MODULE_SKIP,
        "test_ok.py": PROBE_PASSES,
    }
    proc = _run_probe(tmp_path, strict=True, probes=probes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout.splitlines()[-1].lower().replace("0 errors", "")
    assert "strict gpu run: 1 tests ran, 0 of them gpu-marked; 1 passed" in proc.stdout


# -- a whole run, CPU stand-in --------------------------------------------------------------


@pytest.mark.slow
def test_standin_run_passes_every_step_into_at_most_8_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_check(out, GPU_CHECK_STANDIN="1")
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stderr
    # At most 8 files, none in a subfolder, all of them the documented ones.
    found = [p for p in out.rglob("*")]
    assert all(p.is_file() and p.parent == out for p in found), found
    assert {p.name for p in found} <= OUT_FILES and len(found) <= 8
    assert {p.name for p in found} == OUT_FILES  # every step left its file
    # The versions, then one verdict line per step, then the result.
    for needle in ("torch ", "DALI 2.", "python 3.", "device: "):
        assert needle in summary
    verdicts = re.findall(r"^(PASS|FAIL|TIMEOUT)\s+(\w+)\s+\d+ s \(limit\s+\d+ s\)", summary, re.M)
    assert verdicts == [("PASS", step) for step in STEPS], summary
    assert re.search(r"^PASS\s+tests .*strict gpu run: 1 tests ran", summary, re.M), summary
    smoke = re.search(r"^PASS\s+smoke .*$", summary, re.M).group(0)
    assert (
        "(float16) vs CPU backend (float32), 3 windows x 2 images, 384x512, 25 patches of " in smoke
    )
    assert re.search(
        r"worst \d\.\d{3} \(limit 2\.0\); max \|diff\| \d\.\d\d \(limit 16\.0\)", smoke
    )
    assert "libnvjpeg.so." in summary  # the preflight saw DALI load it
    result = re.search(r"^RESULT: PASS .*$", summary, re.M).group(0)
    assert re.search(
        r"; (WARN )?train/dali-cpu ÷ train/synthetic: \d\.\d{3} \(goal >= 0\.95\)", result
    )
    assert proc.stdout.strip().splitlines()[-1].startswith("RESULT: PASS")


@pytest.mark.slow
def test_a_failing_step_is_named_with_its_log_tail(tmp_path: Path) -> None:
    """The tests step selecting a test that does not exist: FAIL, its log's tail, RESULT FAIL.
    Steps left out by GPU_CHECK_ONLY are listed and keep the result from passing."""
    out = tmp_path / "out"
    proc = run_check(
        out,
        GPU_CHECK_STANDIN="1",
        GPU_CHECK_TESTS="tests/test_gpu_check.py::no_such_test",
        GPU_CHECK_ONLY="tests",
    )
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1, summary
    assert re.search(r"^FAIL\s+tests ", summary, re.M), summary
    assert "        | " in summary  # the log's tail, indented under the verdict
    assert re.search(r"^SKIP\s+smoke\s.*not in GPU_CHECK_ONLY", summary, re.M)
    assert re.search(r"^RESULT: FAIL \(tests; not run: smoke bench train\)", summary, re.M)


# -- cuDNN's autotuner: on by default on CUDA, one flag turns it off -------------------------


@pytest.fixture
def restore_cudnn_flag():
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


def test_cudnn_benchmark_is_on_by_default_on_cuda_only(monkeypatch, restore_cudnn_flag) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_runtime(device="cuda", batch_size=4).cudnn_benchmark
    assert not resolve_runtime(device="cuda", batch_size=4, cudnn_benchmark=False).cudnn_benchmark
    assert not resolve_runtime(device="cpu", batch_size=4).cudnn_benchmark


def test_cudnn_benchmark_is_applied_in_one_place(restore_cudnn_flag) -> None:
    cuda_rt = Runtime(
        device=torch.device("cuda"), amp=None, channels_last=False, loader="pillow",
        loader_reason="", num_workers=0, batch_per_rank=4, cudnn_benchmark=True,
    )  # fmt: skip
    torch.backends.cudnn.benchmark = False
    cuda_rt.apply_backend_flags()
    assert torch.backends.cudnn.benchmark is True
    # prepare_model applies it (every consumer of a model passes there); the CPU never
    # reads the switch, so a CPU runtime leaves the caller's value alone.
    cpu_rt = resolve_runtime(device="cpu", batch_size=4)
    for caller_value in (True, False):
        torch.backends.cudnn.benchmark = caller_value
        cpu_rt.prepare_model(torch.nn.Linear(2, 2))
        assert torch.backends.cudnn.benchmark is caller_value


def test_no_cudnn_benchmark_flag() -> None:
    assert parse_args([]).cudnn_benchmark is True
    assert parse_args(["--no_cudnn_benchmark"]).cudnn_benchmark is False
    assert "cudnn_benchmark" in RESUME_MAY_CHANGE  # a resume may change it
    assert runtime.resolve_runtime.__kwdefaults__["cudnn_benchmark"] is True


@pytest.mark.parametrize(("flags", "other"), [([], "off"), (["--no_cudnn_benchmark"], "on")])
def test_bench_measures_train_synthetic_both_ways_on_cuda(flags, other) -> None:
    args = throughput.build_parser().parse_args(["--device", "cpu", *flags])
    rows = {row.name: row for row in throughput.row_plan(args, cuda=True)}
    assert "train/synthetic" in rows and rows["train/synthetic"].cudnn_benchmark is None
    extra = rows[f"train/synthetic-cudnn-{other}"]
    assert extra.kind == "synthetic" and extra.train
    assert extra.cudnn_benchmark is (other == "on")
    # On the CPU the autotuner does not exist: no such row.
    cpu_rows = [row.name for row in throughput.row_plan(args, cuda=False)]
    assert not any("cudnn" in name for name in cpu_rows)
