"""RT4KSR network in its two forms: train-time (as released) and fused (inference).

Both forms share one skeleton so their state-dict keys match the released checkpoints and the
fused checkpoints written by the paper's own code:

    pixel-unshuffle(2) -> head.0 (3x3) -> body.i [norm -> conv1 -> GELU] -> tail.0 (norm)
    -> tail.1 (conv block) -> upsample.0 (3x3) -> pixel-shuffle(2 * scale)

The released configuration also carries a high-frequency branch (`gamma`, `hfb.*`, a Gaussian
blur). It only enters the output through `tail(gamma * body + hfb)` when the model is built with
`forget=True`; the released models were trained and are run with `forget=False`, so that branch is
dead weight and is neither built nor computed here (its keys are accepted and dropped on load).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERNORM_EPS = 1e-6


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of an N x C x H x W map."""

    def __init__(self, channels: int, eps: float = LAYERNORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = centred.square().mean(1, keepdim=True)
        scale = self.weight.view(1, -1, 1, 1)
        shift = self.bias.view(1, -1, 1, 1)
        return centred * torch.rsqrt(var + self.eps) * scale + shift


class ExpandedConv(nn.Module):
    """Train-time conv block: 1x1 expand -> 3x3 on the bias-padded map (+ expanded identity)
    -> 1x1 reduce -> + input.

    Padding the expanded map with the expand bias is the same as expanding a zero-padded input,
    which is what makes the whole block collapse into one zero-padded 3x3 convolution.
    """

    def __init__(self, channels: int, mid_channels: int) -> None:
        super().__init__()
        self.expand_conv = nn.Conv2d(channels, mid_channels, 1)
        self.fea_conv = nn.Conv2d(mid_channels, mid_channels, 3)
        self.reduce_conv = nn.Conv2d(mid_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expanded_padded = self.expand_conv(F.pad(x, (1, 1, 1, 1)))
        expanded = expanded_padded[:, :, 1:-1, 1:-1]
        return self.reduce_conv(self.fea_conv(expanded_padded) + expanded) + x


class FusedConv(nn.Module):
    """Inference conv block: the exact single 3x3 equivalent of `ExpandedConv`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.rep_conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rep_conv(x)


class BodyBlock(nn.Module):
    def __init__(self, conv: nn.Module, channels: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.conv1 = conv
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(self.norm(x)))


class RT4KSR(nn.Module):
    """RT4KSR super-resolution network.

    `forward` takes N x C x H x W floats in [0, 1] with H and W even, and returns the unclamped
    N x C x (scale*H) x (scale*W) result.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        features: int = 24,
        blocks: int = 4,
        scale: int = 2,
        fused: bool = False,
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.features = features
        self.blocks = blocks
        self.scale = scale
        self.fused = fused
        self.mid_channels = None if fused else (mid_channels or 2 * features)
        self.description = ""
        self.source_sha256 = ""  # SHA-256 of the checkpoint file the weights came from

        def conv_block() -> nn.Module:
            return FusedConv(features) if fused else ExpandedConv(features, self.mid_channels)

        self.head = nn.Sequential(nn.Conv2d(4 * in_channels, features, 3, padding=1))
        self.body = nn.Sequential(*(BodyBlock(conv_block(), features) for _ in range(blocks)))
        self.tail = nn.Sequential(LayerNorm2d(features), conv_block())
        self.upsample = nn.Sequential(
            nn.Conv2d(features, in_channels * (2 * scale) ** 2, 3, padding=1)
        )

    @property
    def form(self) -> str:
        return "fused" if self.fused else "train"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(
                f"RT4KSR needs even height and width, got {x.shape[-2]}x{x.shape[-1]}; "
                "pad the image (the upscale engine does this for you)"
            )
        features = self.head(F.pixel_unshuffle(x, 2))
        features = self.tail(self.body(features))
        return F.pixel_shuffle(self.upsample(features), 2 * self.scale)
