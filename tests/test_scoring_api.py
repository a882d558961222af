"""The Python API (hyperiqa.Scorer) and the crop settings a run's args.json supplies."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hyperiqa
import predict
from hyperiqa.scorer import crop_settings
from tests.conftest import ROOT, make_dataset, read_json


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("imgs")
    make_dataset(root, 3, size=(240, 256))
    return [root / e["image"] for e in read_json(root / "demo.json")]


def test_paths_pil_images_and_tensors_of_one_picture_score_alike(
    checkpoint: Path, images: list[Path]
) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=3)
    pil = Image.open(images[0])
    array = np.array(pil.convert("RGB"))
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    scores = scorer.score([images[0], pil, tensor, tensor.float() / 255, array, str(images[1])])
    assert scores.shape == (6,)
    assert np.allclose(scores[:5], scores[0], atol=1e-6)
    assert scores[5] != scores[0]
    assert np.array_equal(scorer.score(images[:2]), scorer.score(images[:2]))  # deterministic


def test_an_open_binary_file_is_an_image_too(checkpoint: Path, images: list[Path]) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=3)
    with open(images[0], "rb") as f:
        from_file = scorer.score(f)
    from_bytes = scorer.score([io.BytesIO(images[0].read_bytes())])
    assert np.array_equal(from_file, scorer.score(images[0]))
    assert np.array_equal(from_bytes, from_file)
    with pytest.raises(hyperiqa.UserError, match="image 0: cannot be read"):
        scorer.score(io.BytesIO(b"not an image"))


def test_the_api_gives_predict_py_s_scores(
    checkpoint: Path, images: list[Path], capsys: pytest.CaptureFixture
) -> None:
    argv = ["--checkpoint", str(checkpoint), "--device", "cpu", "--loader", "pillow",
            "--resize", "240x256", "--patch_num", "3", "--json", *map(str, images)]  # fmt: skip
    assert predict.main(argv) == 0
    cli = [row["score"] for row in json.loads(capsys.readouterr().out)]
    api = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=3).score(images)
    assert np.allclose(api, cli, atol=1e-5)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("missing.jpg", "image missing.jpg: file not found"),
        (torch.zeros(4, 8, 8), "image 0: expected a [3, H, W] tensor, got [4, 8, 8]"),
        (np.zeros((8, 8), np.uint8), "image 0: expected a uint8 [H, W, 3] array"),
        (42, "image 0: a path, binary file, PIL image, tensor or array was expected, got int"),
    ],
)
def test_a_bad_image_raises_one_clear_error(checkpoint: Path, bad: object, message: str) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
    with pytest.raises(hyperiqa.UserError) as exc:
        scorer.score([bad])
    assert message in str(exc.value)


def test_a_wrong_checkpoint_raises_one_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(hyperiqa.UserError, match="is not a PyTorch file"):
        hyperiqa.Scorer(text, device="cpu")
    with pytest.raises(hyperiqa.UserError, match="checkpoint not found"):
        hyperiqa.Scorer(tmp_path / "gone.pkl", device="cpu")
    torch.save({"res.conv1.weight": torch.zeros(1)}, tmp_path / "other.pkl")
    with pytest.raises(hyperiqa.UserError, match="does not match HyperNet"):
        hyperiqa.Scorer(tmp_path / "other.pkl", device="cpu")


def test_a_run_s_args_json_supplies_its_crops(checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "best_model.pkl")
    (run / "args.json").write_text(json.dumps({"resize": "256x320", "val_patch_num": 4}))
    notes: list[str] = []
    assert crop_settings(run / "best_model.pkl", echo=notes.append) == ((256, 320), 4)
    assert "as the run validated" in notes[0]
    notes.clear()
    assert crop_settings(run / "best_model.pkl", (384, 512), None, notes.append) == ((384, 512), 4)
    assert "--resize 384x512 differs from the 256x320 the run was validated with" in notes[0]
    assert crop_settings(checkpoint, echo=notes.append) == ((384, 512), 25)  # no run: defaults


def test_import_hyperiqa_stays_light() -> None:
    code = (
        "import sys, hyperiqa, hyperiqa.atomic, hyperiqa.run_summary; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_pip_install_gives_an_importable_library(tmp_path: Path) -> None:
    """`pip install .` installs hyperiqa and pipelines, usable from any folder."""
    # From a copy: a build writes build/ and *.egg-info next to pyproject.toml.
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in ("hyperiqa", "pipelines"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (target / "hyperiqa" / "scorer.py").is_file()
    assert (target / "pipelines" / "loader.py").is_file()
    assert not (target / "tests").exists() and not (target / "bench").exists()
    code = "import hyperiqa, pipelines.loader; print(hyperiqa.__file__, hyperiqa.Scorer.__name__)"
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(target / "hyperiqa")) and "Scorer" in out.stdout


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Image.new("I;16", (8, 8)), "mode I;16 is deeper than 8 bits"),
        (Image.new("F", (8, 8)), "mode F is deeper than 8 bits"),
        (torch.full((3, 8, 8), 2.0), "a float tensor must hold values in [0, 1]"),
        (torch.full((3, 8, 8), float("nan")), "a float tensor must hold values in [0, 1]"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), "expected uint8 or float values"),
        (torch.zeros(3, 0, 0, dtype=torch.uint8), "empty"),
    ],
)
def test_odd_inputs_are_refused_not_silently_scored(checkpoint: Path, bad, message: str) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
    with pytest.raises(hyperiqa.UserError) as exc:
        scorer.score([bad])
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"patch_num": -1}, "patch_num"),
        ({"resize": "240x256"}, "resize"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_scorer_arguments_are_one_clear_error(
    checkpoint: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(hyperiqa.UserError, match=message):
        hyperiqa.Scorer(checkpoint, **kwargs)


def test_a_single_path_is_one_image(checkpoint: Path, images: list[Path]) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
    assert scorer.score(images[0]).shape == (1,)
    assert scorer.score(images[0])[0] == scorer.score([images[0]])[0]


def test_a_single_tensor_or_array_is_one_image(checkpoint: Path, images: list[Path]) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
    array = np.array(Image.open(images[0]).convert("RGB"))
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    expected = scorer.score([images[0]])
    for one in (array, tensor):
        assert np.allclose(scorer.score(one), expected, atol=1e-6)


def test_scores_stream_in_batches_in_order(
    checkpoint: Path, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch smaller than the list: images are scored a batch at a time, in order."""
    whole = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=3)
    small = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=3, batch_size=6)
    listed = [*images, images[0], images[1]]  # 5 images, 2 per batch of 6 patches
    batches = []
    real = type(small)._score_patches

    def recorded(self, patches):
        batches.append(len(patches))
        return real(self, patches)

    monkeypatch.setattr(type(small), "_score_patches", recorded)
    scores = small.score(iter(listed))  # any iterable, consumed once
    assert batches == [2, 2, 1]  # never more than a batch of patches held at once
    assert scores.shape == (5,)
    monkeypatch.undo()
    assert np.allclose(scores, whole.score(listed), atol=1e-5)
    assert scores[3] == pytest.approx(scores[0], abs=1e-6)
    assert small.score([]).shape == (0,)


def test_a_1d_array_of_paths_is_a_list(checkpoint: Path, images: list[Path]) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
    paths = np.array([str(p) for p in images[:2]])
    assert np.allclose(scorer.score(paths), scorer.score(images[:2]))


def test_the_scorer_keeps_the_caller_s_cudnn_switch(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library object must not flip a process-wide switch its caller set."""
    from hyperiqa import scorer

    asked = []
    real = scorer.resolve_runtime
    monkeypatch.setattr(scorer, "resolve_runtime", lambda **kw: asked.append(kw) or real(**kw))
    before = torch.backends.cudnn.benchmark
    try:
        for caller_value in (True, False):
            torch.backends.cudnn.benchmark = caller_value
            hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
            assert asked[-1]["cudnn_benchmark"] is caller_value
            assert torch.backends.cudnn.benchmark is caller_value
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (None, "got NoneType"),
        (5, "got int"),
        (b"/a.jpg", "got bytes"),
        (np.array(5), "got ndarray"),
        (torch.tensor(1.0), "got Tensor"),
        (np.zeros((8, 8), np.uint8), "image 0: expected a uint8 [H, W, 3] array, got uint8 [8, 8]"),
    ],
)
def test_what_is_not_images_is_one_clear_error(
    checkpoint: Path, images: object, message: str
) -> None:
    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
    with pytest.raises(hyperiqa.UserError) as exc:
        scorer.score(images)
    assert message in str(exc.value)


def test_path_like_objects_and_broken_pil_images(
    checkpoint: Path, images: list[Path], tmp_path: Path
) -> None:
    class PathLike:
        def __fspath__(self) -> str:
            return str(images[0])

    scorer = hyperiqa.Scorer(checkpoint, device="cpu", resize=(240, 256), patch_num=1)
    assert np.allclose(scorer.score(PathLike()), scorer.score(images[0]))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images[0].read_bytes()[:2000])
    lazy = Image.open(truncated)  # opened, not decoded: decoding fails later
    with pytest.raises(hyperiqa.UserError, match=r"image 0: cannot be read"):
        scorer.score([lazy])
    closed = Image.open(images[0])
    closed.close()
    with pytest.raises(hyperiqa.UserError, match=r"image 0: cannot be read"):
        scorer.score([closed])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_num": True}, "patch_num"),
        ({"patch_num": 10**12}, "from 1 to 250"),
        ({"batch_size": True}, "batch_size"),
    ],
)
def test_scorer_numbers_are_checked(checkpoint: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(hyperiqa.UserError, match=message):
        hyperiqa.Scorer(checkpoint, device="cpu", **kwargs)


def test_scorer_accepts_numpy_integers_and_refuses_a_non_path(checkpoint: Path) -> None:
    scorer = hyperiqa.Scorer(
        checkpoint, device="cpu", patch_num=np.int64(2), batch_size=np.int64(8)
    )
    assert scorer.patch_num == 2
    for bad in (None, 5):
        with pytest.raises(hyperiqa.UserError, match="checkpoint must be a path"):
            hyperiqa.Scorer(bad, device="cpu")
