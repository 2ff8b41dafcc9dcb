"""Images to model input: placement arithmetic as TF's, batched resizing, pixel values, layouts,
and decoding encoded images in batches (the GPU path, run here on the CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from batch_predict.models.model_spec import InputSpec
from batch_predict.models.device_decode import device_decoder
from batch_predict.models.preprocess import Preprocessor, device_images, placements, working_dtype
from batch_predict.models.vision_ops import decode_image

CPU = torch.device("cpu")


def _spec(**fields) -> InputSpec:
    return dataclasses.replace(InputSpec(size=(416, 416), layout="NCHW", dtype="float32"), **fields)


def test_letterbox_sizes_round_half_to_even_in_float32_as_tensorflow_does():
    # 101 x 832 at r = 0.5 is 50.5 rows: TF's Round (and np.rint) give 50, not 51.
    resized, offsets, canvas = placements(np.array([[1080, 810], [101, 832]]), _spec())
    assert resized.tolist() == [[416, 312], [50, 416]]
    assert offsets.tolist() == [[0, 0], [0, 0]] and canvas.tolist() == [[416, 416], [416, 416]]


def test_centred_letterbox_splits_the_padding():
    _, offsets, _ = placements(np.array([[1080, 810], [416, 832]]), _spec(placement="center"))
    assert offsets.tolist() == [[0, 52], [104, 0]]


def test_keep_ratio_shrinks_to_the_max_side_and_never_enlarges():
    resized, _, canvas = placements(np.array([[100, 200], [800, 1600]]), _spec(resize="keep_ratio", size=None, max_side=400))
    assert resized.tolist() == [[100, 200], [200, 400]] and canvas.tolist() == [[400, 400], [400, 400]]


def test_stretch_ignores_the_aspect_ratio():
    resized, offsets, _ = placements(np.array([[100, 200]]), _spec(resize="stretch", size=(32, 64)))
    assert resized.tolist() == [[32, 64]] and offsets.tolist() == [[0, 0]]


def test_resizing_samples_at_half_pixel_centres_without_antialiasing():
    # Two pixels 0 and 255 stretched to four: sample points -0.25, 0.25, 0.75, 1.25 (clamped),
    # as TF's ResizeBilinear(half_pixel_centers=True); align_corners would give 0, 85, 170, 255.
    image = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2)
    spec = _spec(size=(1, 4), resize="stretch", value_range=(0.0, 255.0))
    out = Preprocessor(spec, CPU).prepare([image]).inputs
    assert out[0, 0, 0].tolist() == [0.0, 63.75, 191.25, 255.0]


def test_padding_channel_order_and_normalization(photos_dir):
    image = np.asarray(Image.open(photos_dir / "zidane.jpg").convert("RGB"))  # 1280 x 720
    plain = Preprocessor(_spec(pad_value=114, value_range=(0.0, 255.0)), CPU).from_images([image])
    bgr = Preprocessor(_spec(pad_value=114, value_range=(0.0, 255.0), channels="BGR"), CPU).from_images([image]).inputs
    normalized = Preprocessor(
        _spec(pad_value=114, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), CPU
    ).from_images([image]).inputs
    rgb = plain.inputs
    assert rgb.shape == (1, 3, 416, 416)
    assert torch.all(rgb[0, :, 234:] == 114) and not torch.all(rgb[0, :, 233] == 114)  # 720 * 0.325 = 234 rows
    assert torch.equal(bgr[0], rgb[0].flip(0))
    expected = (rgb / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalized, expected)
    np.testing.assert_allclose(plain.geometry.scale, [[1280 / 416, 720 / 234]])


def test_nhwc_and_uint8_inputs_keep_the_pixels():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = Preprocessor(_spec(size=(8, 8), layout="NHWC", dtype="uint8"), CPU).from_images([image]).inputs
    assert out.dtype == torch.uint8 and torch.equal(out[0], torch.from_numpy(image))


def test_a_runner_dtype_makes_the_batch_in_it_with_the_float32_batch_values(photos_dir):
    images = [np.asarray(Image.open(photos_dir / n).convert("RGB")) for n in ("bus.jpg", "zidane.jpg")]
    as_float = Preprocessor(_spec(pad_value=114, channels="BGR"), CPU).from_images(images).inputs
    made_in = Preprocessor(_spec(pad_value=114, channels="BGR"), CPU, dtype=torch.bfloat16).from_images(images).inputs
    assert made_in.dtype == torch.bfloat16 and torch.equal(made_in, as_float.to(torch.bfloat16))
    uint8 = Preprocessor(_spec(dtype="uint8"), CPU, dtype=torch.bfloat16).from_images(images).inputs
    assert uint8.dtype == torch.uint8  # a model that declares its input type gets it


def test_images_are_resized_in_float16_only_where_that_rounds_once():
    cuda = torch.device("cuda")
    assert working_dtype(torch.float16, False, cuda) == torch.float16
    assert working_dtype(torch.float16, True, cuda) == torch.float32  # normalizing after would round twice
    assert working_dtype(torch.bfloat16, False, cuda) == torch.float32  # 8 bits: the resize itself would round
    assert working_dtype(torch.float16, False, CPU) == torch.float32


@pytest.mark.parametrize("placement", ["top_left", "center"])
def test_a_batch_of_mixed_sizes_equals_each_image_prepared_alone(photos_dir, placement):
    # Alone, an image's batch fills only the padding around it; mixed, the whole canvas is padded first.
    images = [np.asarray(Image.open(photos_dir / n).convert("RGB")) for n in ("bus.jpg", "zidane.jpg", "bus.jpg")]
    preprocessor = Preprocessor(_spec(pad_value=114, channels="BGR", placement=placement), CPU)
    batch = preprocessor.from_images(images)
    for i, image in enumerate(images):
        alone = preprocessor.from_images([image])
        assert torch.equal(batch.inputs[i], alone.inputs[0])
        np.testing.assert_array_equal(batch.geometry.offset[i], alone.geometry.offset[0])
    assert batch.image_sizes.tolist() == [[810, 1080], [1280, 720], [810, 1080]]


def test_resize_none_hands_over_a_list_of_native_size_images():
    images = [np.zeros((5, 7, 3), np.uint8), np.zeros((6, 4, 3), np.uint8)]
    prepared = Preprocessor(_spec(resize="none", size=None), CPU).from_images(images)
    assert [tuple(t.shape) for t in prepared.inputs] == [(3, 5, 7), (3, 6, 4)] and prepared.input_size is None


def test_encoded_images_decode_in_a_batch_to_the_pixels_pillow_decodes(photos_dir):
    names = ["bus.jpg", "skimage_chelsea.png", "zidane.jpg"]
    encoded = [(photos_dir / n).read_bytes() for n in names]
    decoded = device_images(encoded, CPU, device_decoder(CPU))
    for name, image in zip(names, decoded):
        expected = np.asarray(Image.open(photos_dir / name).convert("RGB"))
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(expected.copy())), name


@pytest.mark.parametrize("damage", ["truncated jpeg", "not an image"])
def test_a_damaged_image_fails_its_batch(photos_dir, damage):
    good = (photos_dir / "zidane.jpg").read_bytes()
    bad = good[:20000] if damage == "truncated jpeg" else b"not an image at all"
    with pytest.raises(RuntimeError):
        device_images([good, bad], CPU, device_decoder(CPU))


def test_one_size_group_of_decoded_jpegs_and_channels_last_arrays_prepares_each_alike(photos_dir):
    # The GPU decoders hand over 3xHxW images and the CPU's share HxWx3 views of one buffer: one
    # group of a batch can hold both, copied into the batch together.
    jpeg = (photos_dir / "bus.jpg").read_bytes()
    pixels = decode_image(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)).permute(1, 2, 0).numpy()
    batch = Preprocessor(_spec(pad_value=114, channels="BGR"), CPU).from_images([jpeg, pixels, jpeg])
    assert torch.equal(batch.inputs[0], batch.inputs[1]) and torch.equal(batch.inputs[1], batch.inputs[2])
