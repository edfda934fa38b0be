"""Image files: 16-bit depth, EXIF orientation, ICC profiles, size guard, atomic writes."""

from __future__ import annotations

import stat
import threading

import numpy as np
import png16
import pytest
import tiff16
from PIL import Image, ImageCms, ImageOps

from rt4ksr_nodes.files.images import ImageReadError, Picture, image_size, read_image, write_image

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _samples(channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (9, 13, channels), dtype=np.uint16)


@pytest.mark.parametrize("channels", [3, 4])
def test_reads_16bit_colour_png_exactly(tmp_path, channels):
    samples = _samples(channels)
    png16.write(tmp_path / "in.png", samples)
    picture = read_image(tmp_path / "in.png")
    assert picture.bits == 16
    assert np.array_equal(np.rint(picture.pixels * 65535).astype(np.uint16), samples)


@pytest.mark.parametrize("channels", [3, 4])
def test_writes_16bit_colour_png_exactly(tmp_path, channels):
    samples = _samples(channels, seed=1)
    write_image(tmp_path / "out.png", Picture(samples / 65535, 16, SRGB))
    assert np.array_equal(png16.read(tmp_path / "out.png"), samples)
    with Image.open(tmp_path / "out.png") as image:  # Pillow agrees on its 8-bit view and ICC
        assert np.array_equal(np.asarray(image), (samples >> 8).astype(np.uint8))
        assert image.info["icc_profile"] == SRGB


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_16bit_round_trips(tmp_path, suffix):
    samples = _samples(3, seed=2)
    write_image(tmp_path / f"out{suffix}", Picture(samples / 65535, 16, SRGB))
    independent = png16.read if suffix == ".png" else tiff16.read_uncompressed
    assert np.array_equal(independent(tmp_path / f"out{suffix}"), samples)
    with Image.open(tmp_path / f"out{suffix}") as image:
        assert image.size == (13, 9)
        assert np.array_equal(np.asarray(image), (samples >> 8).astype(np.uint8))
    picture = read_image(tmp_path / f"out{suffix}")
    assert picture.bits == 16 and picture.icc_profile == SRGB
    assert np.array_equal(np.rint(picture.pixels * 65535).astype(np.uint16), samples)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("predictor", [1, 2])
def test_reads_compressed_16bit_tiff_exactly(tmp_path, channels, predictor):
    # Image editors save 16-bit TIFF compressed; Pillow decodes those through libtiff.
    samples = _samples(channels, seed=5)
    tiff16.write_deflate(tmp_path / "in.tif", samples, predictor)
    picture = read_image(tmp_path / "in.tif")
    assert picture.bits == 16
    assert np.array_equal(np.rint(picture.pixels * 65535).astype(np.uint16), samples)


def test_output_files_get_ordinary_permissions(tmp_path):
    # What open() would give (mkstemp's temporary files are owner-only).
    write_image(tmp_path / "out.png", Picture(np.zeros((4, 4, 3), np.float32), 8))
    (tmp_path / "plain").touch()
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == plain


def test_raised_size_limit_under_concurrent_reads(tmp_path):
    # While one thread reads with Pillow's guard lifted, another thread's read_image still
    # refuses what is over its own limit, and Pillow's setting is restored afterwards.
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    Image.new("RGB", (100, 80)).save(tmp_path / "big.png")
    pillow = Image.MAX_IMAGE_PIXELS
    done = threading.Event()

    def lifted():
        while not done.is_set():
            read_image(tmp_path / "small.png", max_pixels=0)

    threads = [threading.Thread(target=lifted) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(100):
            with pytest.raises(ImageReadError, match="over the 5000-pixel limit"):
                read_image(tmp_path / "big.png", max_pixels=5000)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert Image.MAX_IMAGE_PIXELS == pillow


def test_16bit_gray_png(tmp_path):
    samples = _samples(1, seed=3)[..., 0]
    Image.fromarray(samples).save(tmp_path / "gray.png")
    picture = read_image(tmp_path / "gray.png")
    assert picture.bits == 16 and picture.pixels.shape == (9, 13, 1)
    write_image(tmp_path / "out.png", picture)
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode.startswith("I;16")
        assert np.array_equal(np.asarray(image), samples)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    rgb = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as image:
        expected = np.asarray(ImageOps.exif_transpose(image))
    picture = read_image(tmp_path / "o.png")
    assert np.array_equal(np.rint(picture.pixels * 255).astype(np.uint8), expected)


def _chunks(data: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, data, CRC)."""
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append(data[at : at + 12 + length])
        at += 12 + length
    return chunks


@pytest.mark.parametrize("exif_after_pixels", [False, True])
@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_image_size_is_the_upright_size_read_image_gives(tmp_path, orientation, exif_after_pixels):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(tmp_path / "o.png", exif=exif)
    if exif_after_pixels:  # legal PNG: Pillow finds it only once the pixels are read
        data = (tmp_path / "o.png").read_bytes()
        chunks = _chunks(data)
        exif_chunk = next(c for c in chunks if c[4:8] == b"eXIf")
        rest = [c for c in chunks if c is not exif_chunk]
        (tmp_path / "o.png").write_bytes(data[:8] + b"".join(rest[:-1]) + exif_chunk + rest[-1])
    height, width = read_image(tmp_path / "o.png").pixels.shape[:2]
    assert image_size(tmp_path / "o.png") == (width, height) == ((6, 10) if orientation > 4 else (10, 6))


def test_image_size_of_a_png_without_exif_decodes_no_pixels(tmp_path, monkeypatch):
    from PIL import ImageFile

    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(tmp_path / "plain.png")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded the pixels"))
    assert image_size(tmp_path / "plain.png") == (10, 6)


def test_icc_and_modes_are_kept(tmp_path):
    rgba = np.random.default_rng(4).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "in.webp", lossless=True, icc_profile=SRGB)
    picture = read_image(tmp_path / "in.webp")
    assert picture.bits == 8 and picture.pixels.shape == (5, 7, 4)
    assert picture.icc_profile == SRGB
    write_image(tmp_path / "out.png", picture)
    with Image.open(tmp_path / "out.png") as image:
        assert image.mode == "RGBA" and image.info["icc_profile"] == SRGB
        assert np.array_equal(np.asarray(image), rgba)
    Image.fromarray(rgba[..., 0]).save(tmp_path / "gray.jpg")
    assert read_image(tmp_path / "gray.jpg").pixels.shape == (5, 7, 1)


def test_size_guard(tmp_path):
    Image.new("RGB", (100, 80)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match=r"big\.png: 100x80 is over the 5000-pixel limit"):
        read_image(tmp_path / "big.png", max_pixels=5000)
    assert read_image(tmp_path / "big.png", max_pixels=0).pixels.shape == (80, 100, 3)


def test_unreadable_file_names_file_and_cause(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"broken\.png: cannot read image: not a PNG") as error:
        read_image(tmp_path / "broken.png")
    assert str(error.value).count("broken.png") == 1


def test_failed_write_leaves_no_partial_file(tmp_path):
    (tmp_path / "keep.jpg").write_bytes(b"previous")
    rgba = Picture(np.zeros((4, 4, 4), np.float32), 8)
    with pytest.raises(ValueError, match="JPEG cannot store alpha"):
        write_image(tmp_path / "keep.jpg", rgba)
    assert (tmp_path / "keep.jpg").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.jpg"]


@pytest.mark.parametrize("suffix, lossy", [(".jpg", {}), (".webp", {"lossless": False})])
def test_quality_sets_the_lossy_encoders(tmp_path, suffix, lossy):
    pixels = np.random.default_rng(3).random((24, 32, 3)).astype(np.float32)
    expected = Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
    for quality in (30, 95):
        write_image(tmp_path / f"q{quality}{suffix}", Picture(pixels, 8), quality=quality)
        expected.save(tmp_path / f"pillow{quality}{suffix}", quality=quality, **lossy)
        assert (tmp_path / f"q{quality}{suffix}").read_bytes() == (tmp_path / f"pillow{quality}{suffix}").read_bytes()
    with pytest.raises(ValueError, match="quality must be 1-100"):
        write_image(tmp_path / f"bad{suffix}", Picture(pixels, 8), quality=0)


@pytest.mark.parametrize("bits,channels", [(8, 3), (16, 3), (16, 4), (16, 1)])
def test_png_text_chunks(tmp_path, bits, channels):
    text = {"prompt": '{"1": {}}', "workflow": "caf\u00e9 \u20ac"}  # the euro sign needs iTXt
    pixels = _samples(channels).astype(np.float32) / 65535
    write_image(tmp_path / "t.png", Picture(pixels, bits), text=text)
    with Image.open(tmp_path / "t.png") as image:
        image.load()
        assert image.text == text
    assert read_image(tmp_path / "t.png").bits == bits
