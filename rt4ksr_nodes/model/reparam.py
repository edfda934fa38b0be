"""Exact structural reparameterization: every train-time conv block becomes one 3x3 conv."""

from __future__ import annotations

import torch

from .arch import RT4KSR, ExpandedConv


def fuse_block(block: ExpandedConv) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the zero-padded 3x3 conv equal to `block`, computed in float64.

    With e = W1*x + b1 (expand), the block is W3*(W2 (*) pad_b1(e) + b2 + e) + b3 + x.
    Padding e with b1 equals expanding the zero-padded x, so the 3x3 term is W2∘W1 on the
    zero-padded input plus the constant W2 applied to b1 at every tap.
    """
    w1 = block.expand_conv.weight.detach().double()[:, :, 0, 0]  # mid x c
    b1 = block.expand_conv.bias.detach().double()
    w2 = block.fea_conv.weight.detach().double()  # mid x mid x 3 x 3
    b2 = block.fea_conv.bias.detach().double()
    w3 = block.reduce_conv.weight.detach().double()[:, :, 0, 0]  # c x mid
    b3 = block.reduce_conv.bias.detach().double()
    channels = w1.shape[1]

    mid_kernel = torch.einsum("mnij,nc->mcij", w2, w1)
    mid_kernel[:, :, 1, 1] += w1  # the expanded identity
    mid_bias = b2 + w2.sum(dim=(2, 3)) @ b1 + b1

    kernel = torch.einsum("cm,mdij->cdij", w3, mid_kernel)
    kernel[:, :, 1, 1] += torch.eye(channels, dtype=torch.float64)  # the block's residual
    bias = w3 @ mid_bias + b3
    return kernel, bias


def reparameterize(model: RT4KSR) -> RT4KSR:
    """A new fused model equal to `model`; `model` itself is left untouched."""
    if model.fused:
        raise ValueError("this RT4KSR model is already reparameterized (fused)")
    fused = RT4KSR(
        in_channels=model.in_channels,
        features=model.features,
        blocks=model.blocks,
        scale=model.scale,
        fused=True,
    )
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, ExpandedConv):
            kernel, bias = fuse_block(module)
            state[f"{name}.rep_conv.weight"] = kernel.float()
            state[f"{name}.rep_conv.bias"] = bias.float()
    # The fused model's own keys pick what it takes; load_state_dict copies the values.
    state = {key: state[key] for key in fused.state_dict()}
    fused.load_state_dict(state, strict=True)
    fused.source_sha256 = model.source_sha256
    return fused.eval().requires_grad_(False)
