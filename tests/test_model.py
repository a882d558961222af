"""Tests for hyperiqa.model: state_dict compatibility with the original release,
batched target net correctness, and weight loading / error messages (CPU only)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import ResNet50_Weights

from hyperiqa.model import (
    HyperNet,
    ModelLoadError,
    TargetNetParams,
    build_model,
    param_groups,
    target_net,
)

# Every key and shape of the original release's state_dict (koniq_pretrained.pkl), vendored.
REFERENCE_TSV = Path(__file__).resolve().parent / "data" / "hyperiqa_state_dict.tsv"


@pytest.fixture(scope="module")
def model() -> HyperNet:
    torch.manual_seed(0)
    return HyperNet().eval()


@pytest.fixture(scope="module")
def x3() -> torch.Tensor:
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def params3(model: HyperNet, x3: torch.Tensor):
    with torch.no_grad():
        return model.target_params(x3)


@pytest.fixture(scope="module")
def out3(params3) -> torch.Tensor:
    return target_net(params3)


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return torchvision.models.resnet50(weights=None).state_dict()


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory, resnet50_state) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(resnet50_state, path)
    return path


def _save(obj, path: Path, **kwargs) -> str:
    torch.save(obj, path, **kwargs)
    return str(path)


def _assert_load_error(call, *fragments: str) -> str:
    """``call()`` must raise ModelLoadError whose one-line message holds every fragment."""
    with pytest.raises(ModelLoadError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg
    return msg


# --- architecture --------------------------------------------------------------


def test_state_dict_matches_reference_tsv(model: HyperNet) -> None:
    expected = {}
    for line in REFERENCE_TSV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            expected[key] = shape.strip()
    ours = {k: str(tuple(v.shape)) for k, v in model.state_dict().items()}
    assert ours == expected
    assert list(ours) == list(expected)  # same order too


def test_output_shapes_and_per_sample_independence(
    model: HyperNet, x3: torch.Tensor, out3: torch.Tensor
) -> None:
    assert out3.shape == (3,)
    assert out3.dtype == torch.float32
    with torch.no_grad():
        for i in range(3):
            alone = model(x3[i : i + 1])
            assert alone.shape == (1,)  # no squeeze() bug for B == 1
            torch.testing.assert_close(alone[0], out3[i], atol=1e-4, rtol=0)


def test_batched_target_net_matches_per_sample_loop(params3, out3: torch.Tensor) -> None:
    x, weights, biases = params3
    assert [tuple(w.shape) for w in weights] == [
        (3, 112, 224),
        (3, 56, 112),
        (3, 28, 56),
        (3, 14, 28),
        (3, 1, 14),
    ]
    for b in range(x.shape[0]):
        h = x[b]
        for i in range(4):
            h = torch.sigmoid(F.linear(h, weights[i][b], biases[i][b]))
        q = F.linear(h, weights[4][b], biases[4][b])
        torch.testing.assert_close(out3[b], q[0], atol=1e-5, rtol=0)


def test_matches_original_grouped_conv_formulation(
    model: HyperNet, x3: torch.Tensor, out3: torch.Tensor
) -> None:
    """Re-derives the score the way the original code did (view(-1, out, in, 1, 1)
    weights applied as a grouped 1x1 conv), guarding the weight reshape order."""

    def target_fc(h, w, b):  # h [B,in,1,1], w [B,out,in,1,1], b [B,out]
        n = h.shape[0]
        out = F.conv2d(
            h.reshape(1, -1, 1, 1),
            w.reshape(-1, w.shape[2], 1, 1),
            b.reshape(-1),
            groups=n,
        )
        return out.view(n, w.shape[1], 1, 1)

    with torch.no_grad():
        feat_in, vec = model.res(x3)
        feat = model.conv1(feat_in)
        pooled = model.pool(feat).view(-1, 112)
        n = x3.shape[0]
        sizes = [224, 112, 56, 28, 14]
        convs = [model.fc1w_conv, model.fc2w_conv, model.fc3w_conv, model.fc4w_conv]
        fcs = [model.fc1b_fc, model.fc2b_fc, model.fc3b_fc, model.fc4b_fc]
        h = vec.view(-1, 224, 1, 1)
        for i in range(4):
            w = convs[i](feat).view(-1, sizes[i + 1], sizes[i], 1, 1)
            h = torch.sigmoid(target_fc(h, w, fcs[i](pooled).view(-1, sizes[i + 1])))
        w5 = model.fc5w_fc(pooled).view(-1, 1, 14, 1, 1)
        q = target_fc(h, w5, model.fc5b_fc(pooled).view(-1, 1)).view(n)
    torch.testing.assert_close(out3, q, atol=1e-5, rtol=0)


def test_train_mode_backward_reaches_all_parameters() -> None:
    torch.manual_seed(3)
    net = HyperNet().train()
    net(torch.randn(2, 3, 224, 224)).sum().backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert no_grad == []


# --- precision under autocast ----------------------------------------------------


def _as_fp32(p: TargetNetParams) -> TargetNetParams:
    return TargetNetParams(
        p.in_vec.float(), tuple(w.float() for w in p.weights), tuple(b.float() for b in p.biases)
    )


@pytest.mark.slow  # ResNet-50: the architecture is under test
def test_bf16_autocast_keeps_scores_in_fp32(x3: torch.Tensor) -> None:
    """Under bf16 autocast the backbone and hyper network run in bf16, but the target
    net and so every score stay fp32: bf16 alone would round a score near 70 to a
    multiple of 0.5."""
    torch.manual_seed(0)
    model = HyperNet(backbone="tiny").eval()  # the same hyper and target nets, 4x faster
    with torch.no_grad():
        model.fc5b_fc.bias += 70.0  # scores near 70, where bf16's step is 0.5
        fp32_scores = model(x3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            params = model.target_params(x3)
            scores = model(x3)
            direct = target_net(params)
        fp32_net = target_net(_as_fp32(params))  # the same numbers, no autocast
    assert params.weights[0].dtype == torch.bfloat16  # the hyper network did run in bf16
    assert scores.dtype == direct.dtype == torch.float32
    assert ((fp32_scores > 60) & (fp32_scores < 80)).all(), fp32_scores
    # Exactly what fp32 makes of the hyper network's bf16 outputs ...
    assert (direct - fp32_net).abs().max() < 1e-3
    # ... and not rounded to bf16's grid (0.5 apart near 70).
    assert (direct * 2 != (direct * 2).round()).any()
    # The whole model in bf16 differs from fp32 only by the backbone's rounding.
    assert (scores - fp32_scores).abs().max() < 5.0


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_target_net_under_autocast_matches_fp32_on_extreme_params(scale: float) -> None:
    """Hand-made bf16 parameters, ordinary and huge (sigmoids saturated): the target net
    under bf16 autocast gives what it gives in fp32, finite and float32."""
    g = torch.Generator().manual_seed(4)
    sizes = (224, 112, 56, 28, 14, 1)
    weights = tuple(
        (torch.randn(5, o, i, generator=g) * scale / i**0.5).bfloat16()
        for i, o in itertools.pairwise(sizes)
    )
    biases = [torch.randn(5, o, generator=g).bfloat16() for o in sizes[1:]]
    biases[-1] = biases[-1] + 70.0
    params = TargetNetParams(
        (torch.randn(5, 224, generator=g) * scale).bfloat16(), weights, tuple(biases)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = target_net(params)
    want = target_net(_as_fp32(params))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - want).abs().max() < 1e-3


# --- parameter groups ----------------------------------------------------------


def test_param_groups_partition(model: HyperNet) -> None:
    hyper, backbone = param_groups(model)
    hyper_ids, backbone_ids = {id(p) for p in hyper}, {id(p) for p in backbone}
    assert not hyper_ids & backbone_ids
    all_params = dict(model.named_parameters())
    assert hyper_ids | backbone_ids == {id(p) for p in all_params.values()}
    assert len(hyper) + len(backbone) == len(all_params)
    non_res = {id(p) for n, p in all_params.items() if not n.startswith("res.")}
    assert hyper_ids == non_res
    # The LDA branches are inside `res`, so they train at the backbone rate.
    assert id(model.res.lda1_fc.weight) in backbone_ids
    assert {id(p) for p in model.hyper_parameters()} == hyper_ids
    assert {id(p) for p in model.backbone_parameters()} == backbone_ids


# --- state_dict round trips ----------------------------------------------------


def test_state_dict_round_trip(model: HyperNet, x3: torch.Tensor, tmp_path: Path) -> None:
    path = _save(model.state_dict(), tmp_path / "best_model.pkl")
    torch.manual_seed(4)
    other = HyperNet().eval()
    other.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(other(x3[:1]), model(x3[:1]))


def test_plain_release_style_checkpoint_loads(
    model: HyperNet, x3: torch.Tensor, tmp_path: Path
) -> None:
    # The 2019 release pickle: a plain dict of tensors, legacy (non-zip) format.
    plain = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = _save(plain, tmp_path / "koniq_pretrained.pkl", _use_new_zipfile_serialization=False)
    loaded = build_model("none", init_checkpoint=path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x3[:1]), model(x3[:1]))


# --- build_model ---------------------------------------------------------------


def test_build_model_none() -> None:
    net = build_model("none")
    assert isinstance(net, HyperNet)


@pytest.mark.parametrize("prefix", ["", "res."])
def test_build_model_from_local_resnet50(
    resnet50_state, resnet50_file: Path, tmp_path: Path, prefix: str
) -> None:
    path = resnet50_file
    if prefix:
        path = Path(_save({prefix + k: v for k, v in resnet50_state.items()}, tmp_path / "p.pth"))
    net = build_model(str(path))
    for key in ("conv1.weight", "layer3.2.conv2.weight", "layer4.2.bn3.running_var"):
        assert torch.equal(net.res.state_dict()[key], resnet50_state[key])


def test_build_model_imagenet_uses_torchvision_weights(resnet50_state, monkeypatch) -> None:
    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", lambda self, **kw: resnet50_state)
    net = build_model("imagenet")
    assert torch.equal(net.res.layer1[0].conv1.weight, resnet50_state["layer1.0.conv1.weight"])


def test_imagenet_download_failure_is_a_model_load_error(monkeypatch) -> None:
    def offline(self, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", offline)
    _assert_load_error(
        lambda: build_model("imagenet"), "--backbone_weights none", "--backbone_weights PATH"
    )


def test_backbone_path_errors(resnet50_state, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pth")
    _assert_load_error(lambda: build_model(missing), missing, "not found")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    _assert_load_error(lambda: build_model(str(garbage)), str(garbage), "could not be read")

    not_dict = _save([torch.zeros(1)], tmp_path / "list.pth")
    _assert_load_error(lambda: build_model(not_dict), not_dict, "not a state_dict")

    odd_value = _save({"conv1.weight": [1, 2]}, tmp_path / "odd.pth")
    _assert_load_error(
        lambda: build_model(odd_value), odd_value, "'conv1.weight' holds a list, not a tensor"
    )

    wrong_keys = _save({"foo.weight": torch.zeros(1)}, tmp_path / "keys.pth")
    _assert_load_error(lambda: build_model(wrong_keys), wrong_keys, "missing", "foo.weight")

    bad_shape = dict(resnet50_state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    shape_path = _save(bad_shape, tmp_path / "shape.pth")
    _assert_load_error(lambda: build_model(shape_path), shape_path, "conv1.weight")


def test_init_checkpoint_errors(model: HyperNet, tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.pkl")
    _assert_load_error(lambda: build_model("none", init_checkpoint=absent), absent)

    state = model.state_dict()
    del state["fc5b_fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = _save(state, tmp_path / "broken.pkl")
    _assert_load_error(
        lambda: build_model("none", init_checkpoint=path), path, "fc5b_fc.bias", "extra.weight"
    )
