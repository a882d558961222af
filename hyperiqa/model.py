"""HyperIQA (Su et al., CVPR 2020): a hyper network that predicts the weights of a
small per-image "target" network which then scores image quality.

Layout, top to bottom:

1. ``Bottleneck`` / ``ResNetBackbone``: a ResNet-50 trunk plus the four
   local-distortion-aware (LDA) branches that build the target network's input.
2. ``TargetNetParams`` / ``target_net``: the target network, evaluated for the
   whole batch at once with ``einsum`` instead of building modules per batch.
3. ``HyperNet``: the hyper network that generates the target-net parameters.
4. ``param_groups``: hyper-network vs backbone parameters (two learning rates).
5. ``build_model`` / ``load_weights`` / ``load_hypernet`` / ``ModelLoadError``:
   backbone initialisation and checkpoint loading with one-line, user-facing errors.

Module names, registration order and tensor shapes deliberately mirror the
original release so that its ``state_dict`` (e.g. the published
``koniq_pretrained.pkl``) loads with ``strict=True`` and our checkpoints load
into the original code. Do not rename or reorder submodules.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
from torch import nn


class ModelLoadError(Exception):
    """Weights or a checkpoint could not be loaded; the message is one user-facing line."""


# The side of the square patches the model takes: the LDA branches pool 56/28/14/7
# feature maps with 7x7 windows into vectors of fixed length, which needs 224.
PATCH_SIZE = 224

# Bottleneck blocks per ResNet stage. "resnet50" is the paper's backbone; "tiny"
# keeps every shape the hyper network sees (so the code paths are the same) with
# one block per stage: about 4x faster on a CPU, for smoke runs and tests only.
BACKBONES: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "tiny": (1, 1, 1, 1),
}


# -----------------------------------------------------------------------------
# Backbone: ResNet-50 + local distortion aware (LDA) branches


class Bottleneck(nn.Module):
    """ResNet "v1.5" bottleneck (stride on the 3x3 conv), as in torchvision and the
    original HyperIQA code, so ImageNet weights and published checkpoints fit."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """ResNet-50 without ``fc``, plus the LDA branches.

    Each LDA branch squeezes an intermediate feature map (1x1 conv), average-pools
    it with a 7x7 window and maps the flattened result to a short vector; the four
    vectors are concatenated into the target network's input. The flattened sizes
    (16*64, 32*16, 64*4, 2048) assume 224x224 input patches, as in the paper.
    """

    def __init__(
        self, lda_out_channels: int, in_chn: int, layers: tuple[int, ...] = (3, 4, 6, 3)
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)

        # Registered after layer1..4, matching the original state_dict order.
        self.lda1_pool = nn.Sequential(
            nn.Conv2d(256, 16, kernel_size=1, bias=False), nn.AvgPool2d(7, stride=7)
        )
        self.lda1_fc = nn.Linear(16 * 64, lda_out_channels)
        self.lda2_pool = nn.Sequential(
            nn.Conv2d(512, 32, kernel_size=1, bias=False), nn.AvgPool2d(7, stride=7)
        )
        self.lda2_fc = nn.Linear(32 * 16, lda_out_channels)
        self.lda3_pool = nn.Sequential(
            nn.Conv2d(1024, 64, kernel_size=1, bias=False), nn.AvgPool2d(7, stride=7)
        )
        self.lda3_fc = nn.Linear(64 * 4, lda_out_channels)
        self.lda4_pool = nn.AvgPool2d(7, stride=7)
        self.lda4_fc = nn.Linear(2048, in_chn - lda_out_channels * 3)

        # Original init: He-normal (fan_out) convs, BN = identity, then He-normal
        # (fan_in) for the LDA weights, overriding the conv init above for lda*_pool.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for pool in (self.lda1_pool, self.lda2_pool, self.lda3_pool):
            nn.init.kaiming_normal_(pool[0].weight)
        for fc in (self.lda1_fc, self.lda2_fc, self.lda3_fc, self.lda4_fc):
            nn.init.kaiming_normal_(fc.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes,
                    planes * Bottleneck.expansion,
                    kernel_size=1,
                    stride=stride,
                    bias=False,
                ),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(hyper_in_feat [B,2048,7,7], target_in_vec [B,in_chn])``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        # flatten(1) flattens in logical (C,H,W) order, like the original .view(B, -1),
        # but also works for channels_last tensors.
        lda_1 = self.lda1_fc(self.lda1_pool(x).flatten(1))
        x = self.layer2(x)
        lda_2 = self.lda2_fc(self.lda2_pool(x).flatten(1))
        x = self.layer3(x)
        lda_3 = self.lda3_fc(self.lda3_pool(x).flatten(1))
        x = self.layer4(x)
        lda_4 = self.lda4_fc(self.lda4_pool(x).flatten(1))
        return x, torch.cat((lda_1, lda_2, lda_3, lda_4), dim=1)


# -----------------------------------------------------------------------------
# Target network, batched


class TargetNetParams(NamedTuple):
    """Per-sample inputs and parameters of the target network.

    ``in_vec``: ``[B, in]``; ``weights[i]``: ``[B, out_i, in_i]``;
    ``biases[i]``: ``[B, out_i]``. Five layers; the last one has ``out = 1``.
    """

    in_vec: torch.Tensor
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]


def target_net(p: TargetNetParams) -> torch.Tensor:
    """Runs every sample's own fully connected net at once; returns float32 scores ``[B]``.

    Four ``sigmoid(W h + b)`` layers, then a linear output layer (no sigmoid). The
    original built grouped-conv modules per batch; ``einsum`` over the batch
    dimension computes the same thing without cross-sample mixing.

    Always in fp32 with autocast off: ``einsum`` is on autocast's low-precision
    list, and scores on the 0-100 scale would keep bf16's 8 bits (steps of 0.25
    between 32 and 64, 0.5 between 64 and 128) in the loss and in every score.
    The hyper network's outputs are cast up once, here; the net itself is about
    33k multiply-adds per sample, nothing next to the backbone.
    """
    with torch.autocast(p.in_vec.device.type, enabled=False):
        h = p.in_vec.float()
        last = len(p.weights) - 1
        for i, (w, b) in enumerate(zip(p.weights, p.biases, strict=True)):
            h = torch.einsum("boi,bi->bo", w.float(), h) + b.float()
            if i < last:
                h = torch.sigmoid(h)
    return h.flatten()  # [B, 1] -> [B], also for B == 1


# -----------------------------------------------------------------------------
# Hyper network


class HyperNet(nn.Module):
    """HyperIQA: ResNet-50 features -> target-net weights -> quality score per patch.

    ``model(x)`` takes normalised patches ``[B, 3, 224, 224]`` and returns ``[B]``.
    """

    def __init__(
        self,
        lda_out_channels: int = 16,
        hyper_in_channels: int = 112,
        target_in_size: int = 224,
        target_fc1_size: int = 112,
        target_fc2_size: int = 56,
        target_fc3_size: int = 28,
        target_fc4_size: int = 14,
        feature_size: int = 7,
        backbone: str = "resnet50",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.hyper_in_channels = hyper_in_channels
        self.feature_size = feature_size
        # Target-net layer sizes: in -> fc1 -> fc2 -> fc3 -> fc4 -> 1.
        self.target_sizes = (
            target_in_size,
            target_fc1_size,
            target_fc2_size,
            target_fc3_size,
            target_fc4_size,
        )

        self.res = ResNetBackbone(lda_out_channels, target_in_size, BACKBONES[backbone])
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        # Reduce layer4 features to the hyper network's input channels.
        self.conv1 = nn.Sequential(
            nn.Conv2d(2048, 1024, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 512, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, hyper_in_channels, 1),
            nn.ReLU(inplace=True),
        )

        # Weight generators: a 3x3 conv whose [C, 7, 7] output holds in*out numbers
        # (so C = in*out / 7**2), and a linear layer on the pooled features for the
        # bias. Names and order match the original state_dict.
        def w_conv(n_in: int, n_out: int) -> nn.Conv2d:
            channels, rem = divmod(n_in * n_out, feature_size**2)
            if rem:
                raise ValueError(f"{n_in}*{n_out} is not divisible by feature_size**2")
            return nn.Conv2d(hyper_in_channels, channels, 3, padding=1)

        s = self.target_sizes
        self.fc1w_conv = w_conv(s[0], s[1])
        self.fc1b_fc = nn.Linear(hyper_in_channels, s[1])
        self.fc2w_conv = w_conv(s[1], s[2])
        self.fc2b_fc = nn.Linear(hyper_in_channels, s[2])
        self.fc3w_conv = w_conv(s[2], s[3])
        self.fc3b_fc = nn.Linear(hyper_in_channels, s[3])
        self.fc4w_conv = w_conv(s[3], s[4])
        self.fc4b_fc = nn.Linear(hyper_in_channels, s[4])
        self.fc5w_fc = nn.Linear(hyper_in_channels, s[4])
        self.fc5b_fc = nn.Linear(hyper_in_channels, 1)

        # Original init: He-normal weights for the generators only; conv1 and all
        # generator biases keep PyTorch's defaults.
        for m in self._generators():
            nn.init.kaiming_normal_(m.weight)

    def _generators(self) -> list[nn.Module]:
        return [
            self.fc1w_conv,
            self.fc1b_fc,
            self.fc2w_conv,
            self.fc2b_fc,
            self.fc3w_conv,
            self.fc3b_fc,
            self.fc4w_conv,
            self.fc4b_fc,
            self.fc5w_fc,
            self.fc5b_fc,
        ]

    def target_params(self, x: torch.Tensor) -> TargetNetParams:
        """Generates each sample's target-net input, weights and biases."""
        B = x.shape[0]
        hyper_in_feat, target_in_vec = self.res(x)
        feat = self.conv1(hyper_in_feat)  # [B, 112, 7, 7]
        pooled = self.pool(feat).flatten(1)  # [B, 112]; flatten, not squeeze: B == 1 works

        # The generated conv output [B, C, 7, 7] is read in logical (C, H, W) order
        # and cut into [out, in] rows, exactly like the original's
        # .view(-1, out, in, 1, 1). Any other ordering (e.g. [in, out] or a transpose)
        # would silently break published weights. reshape (not view) keeps that
        # logical order even for channels_last tensors.
        s = self.target_sizes
        w_convs = (self.fc1w_conv, self.fc2w_conv, self.fc3w_conv, self.fc4w_conv)
        b_fcs = (self.fc1b_fc, self.fc2b_fc, self.fc3b_fc, self.fc4b_fc)
        weights = [conv(feat).reshape(B, s[i + 1], s[i]) for i, conv in enumerate(w_convs)]
        biases = [fc(pooled) for fc in b_fcs]
        weights.append(self.fc5w_fc(pooled).reshape(B, 1, s[4]))
        biases.append(self.fc5b_fc(pooled))
        return TargetNetParams(target_in_vec, tuple(weights), tuple(biases))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quality scores ``[B]`` for normalised patches ``[B, 3, 224, 224]``."""
        return target_net(self.target_params(x))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of ``res`` (the ResNet-50 trunk *and* the LDA branches)."""
        return self.res.parameters()

    def hyper_parameters(self) -> Iterator[nn.Parameter]:
        """Everything outside ``res``: conv1 and the weight/bias generators."""
        backbone_ids = {id(p) for p in self.res.parameters()}
        return (p for p in self.parameters() if id(p) not in backbone_ids)


def param_groups(model: HyperNet) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Returns ``(hypernet_params, backbone_params)`` as lists.

    As in the original, the LDA branches live inside ``res`` and so train with the
    backbone learning rate; the hyper group (lr * lr_ratio) is everything else.
    Lists, not iterators: an exhausted iterator silently yields an empty group.
    """
    return list(model.hyper_parameters()), list(model.backbone_parameters())


# -----------------------------------------------------------------------------
# Building and loading


def _is_trunk_key(key: str) -> bool:
    """True for ResNet-50 trunk keys (conv1/bn1/layer*), i.e. not ``lda*`` or ``fc``."""
    return key.startswith(("conv1.", "bn1.", "layer"))


def _brief(keys: list[str], n: int = 3) -> str:
    """``'a, b, c (+4 more)'``: keeps error messages on one short line."""
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _read_state_dict(path: str, what: str) -> dict[str, torch.Tensor]:
    """Loads a ``{str: Tensor}`` mapping with ``weights_only=True`` or raises ModelLoadError."""
    if not os.path.exists(path):
        raise ModelLoadError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{what} {path} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only=True refuses arbitrary pickled objects (safer); torch's own
        # message is long and suggests weights_only=False, so name the cause instead.
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise ModelLoadError(
                f"{what} {path} could not be read as plain tensors (it contains a pickled "
                f"{found.group(1)}); it must be a state_dict saved with "
                "torch.save(model.state_dict(), ...)"
            ) from None
        raise ModelLoadError(
            f"{what} {path} is not a PyTorch file (a state_dict saved with torch.save)"
        ) from None
    except (KeyError, EOFError, ValueError):
        # torch's legacy reader trips over the first bytes of a text or other file.
        raise ModelLoadError(
            f"{what} {path} is not a PyTorch file (a state_dict saved with torch.save)"
        ) from None
    except Exception as e:  # truncated download, unreadable file, ...
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{what} {path} could not be read: {first_line[:200]}") from None
    if isinstance(obj, Mapping) and {"model", "epoch"} <= set(obj):
        raise ModelLoadError(
            f"{what} {path} is a training run's resume state, not a model: pass the run's "
            "best_model.pkl (or epoch_N.pkl), or continue that run with train.py --resume"
        )
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{what} {path} is not a state_dict (expected a mapping of names to tensors, "
            f"got {type(obj).__name__})"
        )
    odd = next(
        (
            (k, v)
            for k, v in obj.items()
            if not (isinstance(k, str) and isinstance(v, torch.Tensor))
        ),
        None,
    )
    if odd is not None:
        raise ModelLoadError(
            f"{what} {path} is not a state_dict: its entry {str(odd[0])[:60]!r} holds a "
            f"{type(odd[1]).__name__}, not a tensor"
        )
    return dict(obj)


def _load_backbone(res: ResNetBackbone, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copies the ResNet-50 trunk weights from ``state`` into ``res``.

    Accepts a torchvision ``resnet50`` state_dict (``fc.*`` ignored) or one whose
    keys carry a ``res.`` prefix (e.g. a full HyperNet state_dict; only ``res.*``
    is used). LDA weights are never taken from here: they are not part of a
    ResNet-50 and stay freshly initialised.
    """
    if any(k.startswith("res.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("res.")}
    ours = {k: v for k, v in res.state_dict().items() if _is_trunk_key(k)}
    trunk = {k: v for k, v in state.items() if _is_trunk_key(k)}
    ignorable = ("fc.", "lda")
    unexpected = [k for k in state if k not in ours and not k.startswith(ignorable)]
    missing = [k for k in ours if k not in trunk]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {_brief(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_brief(unexpected)}")
        raise ModelLoadError(
            f"backbone weights {source} are not a ResNet-50 state_dict: {'; '.join(parts)}"
        )
    wrong = [
        f"{k} {tuple(trunk[k].shape)} != {tuple(v.shape)}"
        for k, v in ours.items()
        if trunk[k].shape != v.shape
    ]
    if wrong:
        raise ModelLoadError(f"backbone weights {source} have wrong shapes: {_brief(wrong, 2)}")
    result = res.load_state_dict(trunk, strict=False)
    # Everything but the LDA branches must have come from the file.
    not_loaded = [k for k in result.missing_keys if _is_trunk_key(k)]
    if not_loaded or result.unexpected_keys:
        raise ModelLoadError(f"backbone weights {source} did not load: {_brief(not_loaded)}")


def load_weights(model: HyperNet, path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Load a full HyperNet state_dict file into ``model`` strictly (a readable
    error on any mismatch); ``what`` names the file in errors."""
    path = os.path.expanduser(path)
    _load_state(model, _read_state_dict(path, what), path, what)


def _load_state(model: HyperNet, state: Mapping[str, torch.Tensor], path: str, what: str) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in ours.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {_brief(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys, e.g. {_brief(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes {_brief(wrong, 2)}")
        raise ModelLoadError(f"{what} {path} does not match HyperNet: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def build_model(
    backbone_weights: str = "imagenet",
    init_checkpoint: str | None = None,
    backbone: str = "resnet50",
) -> HyperNet:
    """Builds a HyperNet with the paper's sizes and initialises it.

    ``backbone_weights``: ``"imagenet"`` (torchvision ResNet-50 IMAGENET1K_V1, the
    weights the original used; downloaded once into the torch hub cache),
    ``"none"`` (random init) or a path to a local ResNet-50 state_dict.
    ``init_checkpoint``: optional full HyperNet state_dict (e.g. the published
    ``koniq_pretrained.pkl``), loaded strictly after the backbone init.
    ``backbone``: a name of ``BACKBONES``; weights fit "resnet50" only.
    Raises ModelLoadError with a one-line message on any loading problem.
    """
    model = HyperNet(backbone=backbone)
    if backbone_weights != "none" and backbone != "resnet50":
        raise ModelLoadError(
            f"the {backbone} backbone has no pretrained weights; use --backbone_weights none"
        )
    if backbone_weights == "imagenet":
        from torchvision.models import ResNet50_Weights

        try:
            state = ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception as e:  # network, proxy, disk or hash errors all end up here
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(
                f"could not download torchvision's ImageNet ResNet-50 weights ({reason}); "
                "use --backbone_weights none (random init) or "
                "--backbone_weights PATH (a local resnet50 state_dict)"
            ) from None
        _load_backbone(model.res, state, "torchvision IMAGENET1K_V1")
    elif backbone_weights != "none":
        path = os.path.expanduser(backbone_weights)
        _load_backbone(model.res, _read_state_dict(path, "backbone weights file"), path)
    if init_checkpoint is not None:
        load_weights(model, init_checkpoint, "init checkpoint")
    return model


def load_hypernet(path: str | os.PathLike, what: str = "checkpoint") -> HyperNet:
    """A HyperNet with the weights of a full state_dict file (best_model.pkl, the
    original release's koniq_pretrained.pkl); ``what`` names it in errors. The
    backbone (resnet50 or tiny) is read off the file's keys."""
    path = os.path.expanduser(path)
    state = _read_state_dict(path, what)
    model = HyperNet(backbone=_backbone_of(state))
    _load_state(model, state, path, what)
    return model


def _backbone_of(state: Mapping[str, torch.Tensor]) -> str:
    """The BACKBONES name whose block counts a state_dict's ``res.layerN.B.*`` keys show
    ("resnet50" when they match none: the strict load then names what is wrong)."""
    found = re.findall(r"^res\.layer([1-4])\.(\d+)\.", "\n".join(state), flags=re.MULTILINE)
    blocks = tuple(
        1 + max((int(b) for s, b in found if s == str(i)), default=-1) for i in range(1, 5)
    )
    return next((name for name, counts in BACKBONES.items() if counts == blocks), "resnet50")
