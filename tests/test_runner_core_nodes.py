"""Headless core nodes give ComfyUI's pixels, names and metadata, and stay in their folders."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from runner_helpers import folders, write_png  # noqa: F401 - fixture
from rt4ksr_nodes.runner import core_nodes, formats
from rt4ksr_nodes.files.paths import UnsafePathError


def test_save_image_truncates_like_comfyui(folders):
    image = torch.tensor([[[[0.999, 0.5, 0.2], [1.2, -0.1, 0.0039]]]])
    result = core_nodes.SaveImage().save_images(image, "q/t")
    saved = np.asarray(Image.open(folders[1] / "q" / "t_00001_.png"))
    assert result["ui"]["images"] == [{"filename": "t_00001_.png", "subfolder": "q", "type": "output"}]
    assert saved.tolist() == [[[254, 127, 51], [255, 0, 0]]]  # rounding would give 255, 128


def test_save_image_counter_tokens_and_batch(folders):
    (folders[1] / "x_00007_.png").write_bytes(b"")
    (folders[1] / "xy_00020_.png").write_bytes(b"")
    core_nodes.SaveImage().save_images(torch.zeros(2, 6, 4, 3), "x")
    core_nodes.SaveImage().save_images(torch.zeros(1, 6, 4, 3), "%width%x%height%/s_%batch_num%")
    names = sorted(p.relative_to(folders[1]).as_posix() for p in folders[1].rglob("*.png"))
    assert names == ["4x6/s_0_00001_.png", "x_00007_.png", "x_00008_.png", "x_00009_.png", "xy_00020_.png"]
    assert not list(folders[1].rglob(".*"))  # no temporary files left


def test_saved_png_carries_prompt_and_workflow(folders):
    prompt, workflow = {"1": {"class_type": "X", "inputs": {}}}, {"nodes": [], "links": []}
    core_nodes.SaveImage().save_images(torch.zeros(1, 2, 2, 3), "m", prompt=prompt, extra_pnginfo={"workflow": workflow})
    text = Image.open(folders[1] / "m_00001_.png").text
    assert json.loads(text["prompt"]) == prompt and json.loads(text["workflow"]) == workflow
    loaded = formats.load(folders[1] / "m_00001_.png")
    assert loaded.prompt == prompt and loaded.editor == workflow


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/tmp/abs/x"])
def test_save_image_refuses_paths_outside_output(folders, prefix):
    with pytest.raises(UnsafePathError):
        core_nodes.SaveImage().save_images(torch.zeros(1, 2, 2, 3), prefix)


def test_save_image_refuses_symlink_out(folders, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", folders[1] / "link")
    with pytest.raises(UnsafePathError):
        core_nodes.SaveImage().save_images(torch.zeros(1, 2, 2, 3), "link/x")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_preview_image_writes_inside_the_output_folder(folders):
    """Headless previews go to <output>/.preview (the runner writes nothing outside the output
    folder), where ComfyUI's "name [temp]" annotation finds them."""
    result = core_nodes.PreviewImage().save_images(torch.zeros(1, 2, 2, 3))
    entry = result["ui"]["images"][0]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert [p.relative_to(folders[1]).as_posix() for p in folders[1].rglob("*.png")] == [
        f".preview/{entry['filename']}"]
    assert core_nodes.LoadImage.VALIDATE_INPUTS(f"{entry['filename']} [temp]") is True
    core_nodes.clear_previews()
    assert not (folders[1] / ".preview").exists()


def test_load_image_rgba_gives_mask_as_inverted_alpha(folders):
    pixels = write_png(folders[0] / "a.png", (5, 3), mode="RGBA")
    image, mask = core_nodes.LoadImage().load_image("a.png")
    assert image.shape == (1, 3, 5, 3) and mask.shape == (1, 3, 5)
    assert torch.equal(image[0], torch.from_numpy(pixels[..., :3].astype(np.float32) / 255.0))
    assert torch.equal(mask[0], 1.0 - torch.from_numpy(pixels[..., 3].astype(np.float32) / 255.0))


def test_load_image_opaque_gives_comfyui_placeholder_mask_and_exif(folders):
    img = Image.new("RGB", (6, 2), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(folders[0] / "r.jpg", exif=exif)
    image, mask = core_nodes.LoadImage().load_image("r.jpg")
    assert image.shape == (1, 6, 2, 3) and mask.shape == (1, 64, 64) and not mask.any()


def test_load_image_list_and_annotations(folders):
    write_png(folders[0] / "b.png")
    write_png(folders[0] / "a.png")
    (folders[0] / "notes.txt").write_text("x")
    write_png(folders[1] / "o.png")
    assert core_nodes.input_files() == ["a.png", "b.png"]
    assert core_nodes.LoadImage.VALIDATE_INPUTS("o.png [output]") is True
    assert core_nodes.LoadImage().load_image("o.png [output]")[0].shape == (1, 32, 32, 3)
    # One annotation, at the end, as ComfyUI's annotated_filepath: a second one is part of the name.
    assert core_nodes.annotated_path("o.png [output] [input]") == (folders[0] / "o.png [output]").resolve()


def test_image_scale_by_rounds_half_to_even_and_matches_interpolate():
    image = torch.rand(1, 5, 7, 3)
    (out,) = core_nodes.ImageScaleBy().upscale(image, "bicubic", 0.5)
    assert out.shape == (1, 2, 4, 3)  # round(2.5) = 2, round(3.5) = 4
    expected = F.interpolate(image.movedim(-1, 1), size=(2, 4), mode="bicubic").movedim(1, -1)
    assert torch.equal(out, expected)


def test_image_scale_lanczos_goes_through_8_bit_pil():
    image = torch.rand(1, 8, 8, 3)
    (out,) = core_nodes.ImageScale().upscale(image, "lanczos", 16, 0, "disabled")
    pil = Image.fromarray(np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)).resize((16, 16), Image.LANCZOS)
    assert torch.equal(out[0], torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0))


def test_image_scale_center_crop():
    image = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(1, 2, 8, 3)
    (out,) = core_nodes.ImageScale().upscale(image, "nearest-exact", 2, 2, "center")
    assert torch.equal(out, image[:, :, 3:5])
    assert core_nodes.ImageScale().upscale(image, "area", 0, 0, "disabled")[0] is image


def test_join_image_with_alpha_inverts_and_resizes_the_mask():
    image = torch.rand(3, 4, 6, 3)
    mask = torch.zeros(2, 2, 3)
    mask[:, :, 1:] = 1.0  # 1 = transparent, as LoadImage's mask
    (joined,) = core_nodes.JoinImageWithAlpha().join(image, mask)
    assert joined.shape == (2, 4, 6, 4)  # ComfyUI keeps min(batch sizes)
    assert torch.equal(joined[..., :3], image[:2])
    expected = 1.0 - F.interpolate(mask[:, None], size=(4, 6), mode="bilinear")[:, 0]
    assert torch.equal(joined[..., 3], expected)
    assert joined[0, 0, 0, 3] == 1.0 and joined[0, 0, -1, 3] == 0.0
