"""Image decoding and preprocessing: every mode users throw at it, and parity with training."""
import io

import numpy as np
import pytest
from PIL import Image

from edge_slim.errors import BadInputError
from edge_slim.scenes import generate as G
from edge_slim.scenes.render import render
from edge_slim.vision.preprocess import IMAGE_SIZE, load_image, normalize, to_model_input


def _png(img, fmt="PNG", **kw):
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


@pytest.fixture(scope="module")
def scene_img():
    return render(G.sample_scene(0, 1), 192)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16", "I", "F", "1"])
def test_modes_decode_to_rgb(scene_img, mode):
    if mode == "I;16":
        img = Image.fromarray(np.asarray(scene_img.convert("L")).astype(np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode in ("I", "F"):
        img = scene_img.convert("L").convert(mode)
    else:
        img = scene_img.convert(mode)
    x = to_model_input(img)
    assert x.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == np.float32 and np.isfinite(x).all()


def test_sixteen_bit_png_matches_eight_bit(scene_img):
    g8 = np.asarray(scene_img.convert("L"))
    g16 = Image.fromarray(g8.astype(np.uint16) * 257)
    a = to_model_input(load_image(_png(g16)))
    b = to_model_input(Image.fromarray(g8))
    assert np.abs(a - b).max() <= 1 / 255 / 0.25 + 1e-6


def test_rgba_composited_over_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied(scene_img):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    raw = scene_img.crop((0, 0, 192, 96))
    img = load_image(_png(raw, "JPEG", exif=exif.tobytes(), quality=95))
    assert img.size == (96, 192)


@pytest.mark.parametrize("size", [(1, 1), (3000, 7), (7, 3000), (96, 96), (641, 480)])
def test_any_size(size):
    x = to_model_input(Image.new("RGB", size, (10, 200, 30)))
    assert x.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("arr", [np.zeros((32, 32, 3), np.uint8), np.zeros((3, 32, 32), np.float32),
                                 np.ones((32, 32), np.float64), np.zeros((32, 32, 4), np.uint16)])
def test_numpy_arrays(arr):
    assert to_model_input(arr).shape == (3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("bad", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
                                 np.zeros((0, 5, 3), np.uint8), np.zeros((5, 5, 7), np.uint8),
                                 np.full((4, 4, 3), np.nan, np.float32), 12345])
def test_bad_inputs_are_clear_errors(bad):
    with pytest.raises(BadInputError):
        to_model_input(bad)


def test_truncated_png_is_clear_error(scene_img, tmp_path):
    data = _png(scene_img)
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="not a readable image"):
        to_model_input(p)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        to_model_input(tmp_path / "nope.png")


def test_same_as_training_preprocessing():
    """Training normalizes cached uint8 scenes with torch; inference with NumPy: same numbers."""
    torch = pytest.importorskip("torch")
    from edge_slim.aot.model.data import _scene_arrays, make_tokenizer
    from edge_slim.aot.model.train import to_tensor_images
    tok = make_tokenizer(16)
    for i in range(6):  # includes scenes rendered at 2x and resized, as user photos are
        u8 = _scene_arrays(0, i, tok)["images"]
        t = to_tensor_images(u8[None])[0].numpy()
        assert np.array_equal(t, normalize(u8)) or np.abs(t - normalize(u8)).max() < 1e-6
    hi = render(G.sample_scene(0, 3), 2 * IMAGE_SIZE)
    via_training = np.asarray(load_image(hi).resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.BILINEAR))
    assert np.array_equal(normalize(via_training), to_model_input(hi))
    del torch


def _plain(img) -> np.ndarray:
    """The reference: the full-resolution upright image, one bilinear resize, normalize."""
    return normalize(np.asarray(load_image(img).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)))


@pytest.mark.parametrize("size", [(96, 96), (191, 193), (640, 480), (671, 300), (300, 671)])
@pytest.mark.parametrize("kind", ["array", "png", "jpeg"])
def test_below_the_reducing_threshold_is_bit_identical_to_one_plain_resize(size, kind):
    """Up to 2 x REDUCING_GAP x 96 px (671) the fast path is the plain one, bit for bit (training: 96, 192)."""
    from edge_slim.vision.preprocess import prepare
    a = render(G.sample_scene(0, 2), max(size)).crop((0, 0, *size))
    x = {"array": np.asarray(a), "png": _png(a), "jpeg": _png(a, "JPEG", quality=90)}[kind]
    got, wh = prepare(x)
    assert wh == size and np.array_equal(got, _plain(x))


@pytest.mark.parametrize("size", [(1024, 1024), (1024, 700), (700, 1100)])
@pytest.mark.parametrize("kind", ["array", "jpeg"])
def test_large_images_stay_within_a_few_levels_and_report_their_full_size(size, kind):
    """Large sides are box-reduced first (JPEG: decoded at reduced scale); the size returned (which
    locate scales its box by) is still the full image's."""
    from edge_slim.vision.preprocess import STD, prepare
    a = render(G.sample_scene(0, 4), max(size)).crop((0, 0, *size))
    x = {"array": np.asarray(a), "jpeg": _png(a, "JPEG", quality=90)}[kind]
    got, wh = prepare(x)
    levels = np.abs(got - _plain(x)).max() * STD * 255
    assert wh == size and got.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and levels <= 8, levels


def test_rotated_large_jpeg_is_upright_with_swapped_size():
    """An EXIF-rotated JPEG is not decoded at reduced scale (the orientation is applied to the full image)."""
    from edge_slim.vision.preprocess import STD, prepare
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = render(G.sample_scene(0, 5), 1000).crop((0, 0, 1000, 700))
    data = _png(raw, "JPEG", exif=exif.tobytes(), quality=90)
    got, wh = prepare(data)
    assert wh == (700, 1000) and np.abs(got - _plain(data)).max() * STD * 255 <= 8


def test_callers_image_and_array_are_left_alone(scene_img):
    arr = np.asarray(scene_img).copy()
    before = arr.copy()
    to_model_input(arr)
    assert np.array_equal(arr, before)
    rgb = scene_img.convert("RGB")
    out = load_image(rgb)
    assert out is not rgb and out.tobytes() == rgb.tobytes()
