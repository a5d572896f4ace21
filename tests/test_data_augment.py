"""The strong view (dataset/augment.py): every operation and the Cutout equal Pillow's, and the view of a
sample is a pure function of (seed, epoch, index) in memory and streamed: the same whatever batch or rank
share the sample lands in, different from its standard view and from epoch to epoch, and asking for it
leaves the standard views as they were."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from dataset.augment import CUTOUT_FILL, CUTOUT_MAX, OPS, STRONG, _cutout, strong_draws, strong_ops
from dataset.loader import Loader, StreamLoader
from dataset.store import Split
from dataset.stream import StreamSplit

RNG = np.random.default_rng(0)
# Half low-contrast images: autocontrast, equalize and contrast then have something to do.
IMAGES = RNG.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
IMAGES[:4] = IMAGES[:4] // 4 + 60

PILLOW = {
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "equalize": lambda im, v: ImageOps.equalize(im),
    "identity": lambda im, v: im,
    "posterize": lambda im, v: ImageOps.posterize(im, int(v)),
    "rotate": lambda im, v: im.rotate(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "shear_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "translate_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])),
}


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_operation_equals_pillows(op):
    magnitudes = torch.tensor(RNG.uniform(op.low, op.high, len(IMAGES)), dtype=torch.float32)
    ours = op.apply(_tensor(IMAGES), magnitudes).permute(0, 2, 3, 1).numpy()
    for image, magnitude, got in zip(IMAGES, magnitudes.tolist(), ours):
        np.testing.assert_array_equal(got, np.asarray(PILLOW[op.name](Image.fromarray(image), magnitude)))


def test_cutout_equals_pillows_rectangle():
    draws = torch.rand(len(IMAGES), 3, generator=torch.Generator().manual_seed(3))
    ours = _cutout(_tensor(IMAGES), draws).permute(0, 2, 3, 1).numpy()
    for image, (u, cx, cy), got in zip(IMAGES, draws.tolist(), ours):
        im = Image.fromarray(image)
        side = u * CUTOUT_MAX * 32
        x0, y0 = int(max(0, cx * 32 - side / 2)), int(max(0, cy * 32 - side / 2))
        ImageDraw.Draw(im).rectangle((x0, y0, min(32, x0 + side), min(32, y0 + side)), CUTOUT_FILL)
        np.testing.assert_array_equal(got, np.asarray(im))


def test_an_images_operations_do_not_depend_on_its_batch():
    draws = strong_draws(len(IMAGES), torch.Generator().manual_seed(1))
    batched = strong_ops(_tensor(IMAGES), draws)
    for i in range(len(IMAGES)):
        assert torch.equal(strong_ops(_tensor(IMAGES[i:i + 1]), draws[i:i + 1])[0], batched[i])


def _loader(batch_size: int, seed: int = 0) -> Loader:
    split = Split(np.ascontiguousarray(IMAGES.repeat(3, axis=0).transpose(0, 3, 1, 2)), np.arange(24) % 4)
    return Loader(split, [0.5] * 3, [0.25] * 3, batch_size, torch.device("cpu"), augment=True, shuffle=True, seed=seed)


def _by_index(batches) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    standard, strong = {}, {}
    for x, _, idx, views in batches:
        for row, i in enumerate(idx.tolist()):
            standard[i], strong[i] = x[row], views[STRONG][row]
    return standard, strong


def test_in_memory_strong_view_is_a_function_of_seed_epoch_and_index():
    standard, strong = _by_index(_loader(8).view_batches(2, extra=(STRONG,)))
    # other batches around each sample: batch size 5 (another order of the same epoch) and rank shares
    _, other = _by_index(_loader(5).view_batches(2, extra=(STRONG,)))
    shares = [_by_index(_loader(8).view_batches(2, rank, 2, extra=(STRONG,)))[1] for rank in (0, 1)]
    assert set(strong) == set(range(24))
    for i in range(24):
        assert torch.equal(other[i], strong[i]) and torch.equal({**shares[0], **shares[1]}[i], strong[i])
    assert all(not torch.equal(standard[i], strong[i]) for i in range(24))
    _, next_epoch = _by_index(_loader(8).view_batches(3, extra=(STRONG,)))
    _, other_seed = _by_index(_loader(8, seed=1).view_batches(2, extra=(STRONG,)))
    assert all(not torch.equal(next_epoch[i], strong[i]) and not torch.equal(other_seed[i], strong[i])
               for i in range(24))
    # asking for the strong view leaves the standard views as they were
    plain = {int(i): x[row] for x, _, idx in _loader(8).batches(2) for row, i in enumerate(idx)}
    assert all(torch.equal(plain[i], standard[i]) for i in range(24))
    with pytest.raises(ValueError, match="no view 'blurred'"):
        next(_loader(8).view_batches(1, extra=("blurred",)))


def test_streamed_strong_view_is_a_function_of_seed_epoch_and_index(tmp_path):
    files = []
    for i, image in enumerate(IMAGES):
        Image.fromarray(np.kron(image, np.ones((2, 2, 1), np.uint8))).save(tmp_path / f"{i}.png")  # 64 px
        files.append(f"{i}.png".encode())
    split = StreamSplit(tmp_path, np.array(files), np.arange(8) % 2, image_size=32)

    def loader(batch_size):
        return StreamLoader(split, [0.5] * 3, [0.25] * 3, batch_size, torch.device("cpu"), augment=True,
                            shuffle=True, seed=0)

    standard, strong = _by_index(loader(4).view_batches(1, extra=(STRONG,)))
    _, other = _by_index(loader(3).view_batches(1, extra=(STRONG,)))
    _, next_epoch = _by_index(loader(4).view_batches(2, extra=(STRONG,)))
    plain = {int(i): x[row] for x, _, idx in loader(4).batches(1) for row, i in enumerate(idx)}
    for i in range(8):
        assert torch.equal(other[i], strong[i]) and torch.equal(plain[i], standard[i])
        assert not torch.equal(standard[i], strong[i]) and not torch.equal(next_epoch[i], strong[i])
