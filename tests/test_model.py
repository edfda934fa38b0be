"""The model layer against the real released checkpoints and an independent re-computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ground_truth import SCALES, checkpoint_path, image_paths, load_rgb
from rt4ksr_nodes import reparameterize

# An independent functional re-computation, straight from the raw checkpoint tensors: no code of
# the package is used, and the bias-padded 3x3 is done literally (pad, then overwrite the border).


def raw_state(scale: int) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint_path(scale), map_location="cpu", weights_only=True)["state_dict"]
    return {key.removeprefix("module."): value for key, value in state.items()}


def reference_layernorm(x, weight, bias):
    mu = x.mean(dim=1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * weight[None, :, None, None] + bias[None, :, None, None]


def reference_block(x, sd, prefix):
    expanded = F.conv2d(x, sd[f"{prefix}.expand_conv.weight"], sd[f"{prefix}.expand_conv.bias"])
    border = sd[f"{prefix}.expand_conv.bias"][None, :, None, None]
    padded = F.pad(expanded, (1, 1, 1, 1))
    padded[:, :, :1, :] = border
    padded[:, :, -1:, :] = border
    padded[:, :, :, :1] = border
    padded[:, :, :, -1:] = border
    mid = F.conv2d(padded, sd[f"{prefix}.fea_conv.weight"], sd[f"{prefix}.fea_conv.bias"]) + expanded
    return F.conv2d(mid, sd[f"{prefix}.reduce_conv.weight"], sd[f"{prefix}.reduce_conv.bias"]) + x


def reference_forward(sd, x, scale):
    h = F.conv2d(F.pixel_unshuffle(x, 2), sd["head.0.weight"], sd["head.0.bias"], padding=1)
    index = 0
    while f"body.{index}.norm.weight" in sd:
        normed = reference_layernorm(h, sd[f"body.{index}.norm.weight"], sd[f"body.{index}.norm.bias"])
        h = F.gelu(reference_block(normed, sd, f"body.{index}.conv1"))
        index += 1
    h = reference_block(reference_layernorm(h, sd["tail.0.weight"], sd["tail.0.bias"]), sd, "tail.1")
    out = F.conv2d(h, sd["upsample.0.weight"], sd["upsample.0.bias"], padding=1)
    return F.pixel_shuffle(out, 2 * scale)


def test_hyperparameters_read_from_shapes(train_models, fused_models):
    for scale in SCALES:
        for model in (train_models[scale], fused_models[scale]):
            assert (model.scale, model.in_channels, model.features, model.blocks) == (scale, 3, 24, 4)
            assert not model.training
        assert train_models[scale].form == "train" and fused_models[scale].form == "fused"
        assert f"x{scale}" in fused_models[scale].description


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["baby", "butterfly", "bird"])
def test_train_form_equals_independent_recomputation(train_models, scale, name):
    path = next(p for p in image_paths("Set5") if p.stem == name)
    x = load_rgb(path, crop=96)
    with torch.no_grad():
        expected = reference_forward(raw_state(scale), x, scale)
        got = train_models[scale](x)
    assert got.shape == (1, 3, 96 * scale, 96 * scale)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scale", SCALES)
def test_train_form_on_whole_nonsquare_image(train_models, scale):
    path = next(p for p in image_paths("Set14") if p.stem == "comic")  # 250 x 361 -> even crop
    x = load_rgb(path)[:, :, :360, :250]
    with torch.no_grad():
        diff = (train_models[scale](x) - reference_forward(raw_state(scale), x, scale)).abs().max()
    assert diff.item() <= 1e-5


@pytest.mark.parametrize("scale", SCALES)
def test_fused_equals_train_form(train_models, fused_models, scale):
    total = identical = 0
    worst = 0.0
    for path in image_paths("Set5") + image_paths("Set14")[:4]:
        x = load_rgb(path, crop=64)
        with torch.no_grad():
            train = train_models[scale](x)
            fused = fused_models[scale](x)
        worst = max(worst, (train - fused).abs().max().item())
        to8 = lambda t: (t.clamp(0, 1) * 255).round()  # noqa: E731
        identical += (to8(train) == to8(fused)).sum().item()
        total += train.numel()
    assert worst <= 1e-5
    assert identical / total >= 0.999


def test_fusion_leaves_source_model_untouched(train_models):
    model = train_models[2]
    before = copy.deepcopy(model.state_dict())
    fused = reparameterize(model)
    after = model.state_dict()
    assert fused is not model and fused.form == "fused" and model.form == "train"
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(fused.state_dict()[k].data_ptr() != after[k].data_ptr() for k in fused.state_dict() if k in after)


def test_fusing_a_fused_model_is_refused(fused_models):
    with pytest.raises(ValueError, match="already reparameterized"):
        reparameterize(fused_models[2])


def test_forward_rejects_odd_sizes(fused_models):
    with pytest.raises(ValueError, match="even height and width"):
        fused_models[2](torch.zeros(1, 3, 9, 10))


def test_high_frequency_branch_is_dead_in_released_checkpoints():
    # Why skipping hfb is safe: the released models never route it into the output, and its gate
    # is zero anyway.
    for scale in SCALES:
        assert raw_state(scale)["gamma"].abs().max().item() == 0.0


@pytest.mark.parametrize("scale", SCALES)
def test_receptive_field_fits_the_tiling_context(train_models, scale):
    # The engine's seam-free tiling rests on this: an output pixel depends on no input pixel
    # farther away than the context each tile carries. Measured in float64 by perturbing one
    # input pixel (both parities: pixel-unshuffle pairs them) and finding every output that moved.
    from rt4ksr_nodes.engine.tiling import context_for

    model = copy.deepcopy(train_models[scale]).double()
    x = torch.rand(1, 3, 80, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reach = 0
    for q in (40, 41):
        y = x.clone()
        y[0, :, q, q] += 1.0
        with torch.no_grad():
            moved = (model(y) - model(x)).abs().sum(1)[0].nonzero() // scale
        reach = max(reach, (moved - q).abs().max().item())
    assert reach == 15  # measured here; a change means the architecture reading changed
    assert context_for(model) >= reach
