"""The network as the engine runs it: the model's own weights, rearranged for speed.

Each change is exact up to float rounding and measured on the CPU (fp32, x3 1280x720, 2 cores):
- Input: pixel-unshuffle(2) followed by the head's 3x3 conv is one 6x6 stride-2 conv on the image
  (the same products without the unshuffled copy; 5.3 -> 4.0 ms).
- LayerNorm: one kernel over the channels_last map (ChannelsLastLayerNorm).
- Body conv + GELU: one oneDNN convolution with GELU as its post-op, on the CPU where this torch
  has it (checked once per process against the two-step form): a pass over the map less per
  block.
- Output: pixel-shuffle(f), f = 2 * scale, is left to the caller, who writes the last conv's
  output straight into the image (write_blocks). The conv's output channels are reordered from
  (colour, row, column), as pixel_shuffle wants them, to (row, column, colour): in channels_last
  memory a block's row of f pixels is then f x 3 consecutive values, which land side by side in
  an H x W x 3 image. One clamped strided copy replaces pixel_shuffle, clamp and copy
  (24.7 -> 6.2 ms per 4K frame).

The result of forward() is therefore N x (f * f * 3) x h x w, channels_last, h x w the
half-resolution grid; write_blocks() turns it into pixels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..model.arch import RT4KSR, FusedConv, LayerNorm2d


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm2d in one kernel. On a channels_last map the channel axis is innermost, so the
    N x H x W x C view is contiguous and F.layer_norm normalises it in a single pass, where the
    reference formula takes eight (measured: 1080p x2 on the CPU, 716 -> 440 ms)."""

    def __init__(self, norm: LayerNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nhwc = x.permute(0, 2, 3, 1)
        return F.layer_norm(nhwc, nhwc.shape[-1:], self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class ConvGELU(nn.Module):
    """A zero-padded 3x3 conv followed by exact (erf) GELU; one oneDNN call on CPU fp32."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        # Decided here, so compiled graphs see a constant.
        self.onednn = torch.backends.mkldnn.enabled and onednn_conv_gelu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.device.type == "cpu" and x.dtype == torch.float32:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, [1, 1], [1, 1], [1, 1], 1, "gelu", [], "none"
            )
        return F.gelu(F.conv2d(x, self.weight, self.bias, padding=1))


@functools.cache
def onednn_conv_gelu() -> bool:
    """Whether this torch has oneDNN's conv with a GELU post-op, giving the two-step result.
    A private operator (the one inductor emits), so it is checked, not assumed."""
    op = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, 8, 6, 6, generator=generator, device="cpu").contiguous(
            memory_format=torch.channels_last
        )
        weight = torch.randn(8, 8, 3, 3, generator=generator, device="cpu")
        bias = torch.randn(8, generator=generator, device="cpu")
        with torch.inference_mode():
            fused = op(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "gelu", [], "none")
            plain = F.gelu(F.conv2d(x, weight, bias, padding=1))
    except Exception:  # noqa: BLE001 - a private operator: any failure means "not in this torch"
        return False
    return fused.shape == plain.shape and torch.allclose(fused, plain, rtol=1e-5, atol=1e-5)


class Head(nn.Module):
    """pixel_unshuffle(2) then a 3x3 conv, as one 6x6 stride-2 conv: unshuffled channel
    c * 4 + 2 * di + dj at (y, x) is the image's channel c at (2y + di, 2x + dj)."""

    def __init__(self, conv: nn.Conv2d, in_channels: int) -> None:
        super().__init__()
        weight = conv.weight.detach()
        kernel = weight.new_zeros(weight.shape[0], in_channels, 6, 6)
        for di in range(2):
            for dj in range(2):
                kernel[:, :, di::2, dj::2] = weight[:, di * 2 + dj :: 4]
        self.weight = nn.Parameter(kernel, requires_grad=False)
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=2, padding=2)


class EngineNetwork(nn.Module):
    """`model`'s computation up to, not including, the final pixel shuffle (module doc)."""

    def __init__(self, model: RT4KSR) -> None:
        super().__init__()
        self.factor = 2 * model.scale
        self.head = Head(model.head[0], model.in_channels)
        self.body = nn.Sequential(*(_block(block) for block in model.body))
        self.tail = nn.Sequential(ChannelsLastLayerNorm(model.tail[0]), model.tail[1])
        self.upsample = _block_major(model.upsample[0], model.in_channels, self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.tail(self.body(self.head(x))))


def _block(block: nn.Module) -> nn.Module:
    norm = ChannelsLastLayerNorm(block.norm)
    if isinstance(block.conv1, FusedConv):
        return nn.Sequential(norm, ConvGELU(block.conv1.rep_conv))
    return nn.Sequential(norm, block.conv1, nn.GELU())  # train-time form: run as it is


def _block_major(conv: nn.Conv2d, channels: int, factor: int) -> nn.Conv2d:
    """`conv` with its output channels in (row, column, colour) order."""
    order = [
        colour * factor * factor + row * factor + column
        for row in range(factor)
        for column in range(factor)
        for colour in range(channels)
    ]
    reordered = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
    with torch.no_grad():
        reordered.weight.copy_(conv.weight[order])
        reordered.bias.copy_(conv.bias[order])
    return reordered


def write_blocks(blocks: torch.Tensor, target: torch.Tensor) -> None:
    """Write the network's output into pixels, clamped to [0, 1].

    blocks: h x w x f x f x C (block row, block column, row and column inside the block,
    colour), a view of EngineNetwork's output. target: H x W x C, at most h f x w f, in the same
    dtype, on any device (a canvas too big for the compute device is kept on the host); only the
    blocks it covers are read, the last block row and column may be cut short.
    """
    f = blocks.shape[2]
    height, width = target.shape[:2]
    rows, cols = height // f, width // f  # whole blocks
    row_parts = ((0, rows, f), (rows, rows + 1, height - rows * f))
    col_parts = ((0, cols, f), (cols, cols + 1, width - cols * f))
    for top, bottom, sub_rows in row_parts:
        for left, right, sub_cols in col_parts:
            if bottom == top or right == left or not sub_rows or not sub_cols:
                continue
            source = blocks[top:bottom, left:right, :sub_rows, :sub_cols]
            region = target[
                top * f : top * f + (bottom - top) * sub_rows,
                left * f : left * f + (right - left) * sub_cols,
            ]
            view = region.unflatten(0, (bottom - top, sub_rows)).unflatten(
                2, (right - left, sub_cols)
            )
            pixels = source.permute(0, 2, 1, 3, 4)
            if view.device == pixels.device:
                torch.clamp(pixels, 0, 1, out=view)  # one pass, no temporary
            else:
                view.copy_(pixels.clamp(0, 1))
