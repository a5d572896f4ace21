"""The ``folder`` dataset: your own images in class folders, with optional PNG or CSV-box masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from dataset import load_prepared, prepare
from dataset.store import Split
from core.errors import KdlensError
from dataset.params import DataParams
from stages.params import parse_params
from explain.knowledge import select_images

CLASSES = ["hstripes", "solid", "vstripes"]


def _draw(rng: np.random.Generator, label: int, width: int, height: int) -> tuple[np.ndarray, tuple]:
    """A dark noisy background with one bright patch whose texture is the class; returns (RGB, box)."""
    img = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    side = int(rng.integers(min(width, height) // 3, min(width, height) // 2 + 1))
    x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    yy, xx = np.mgrid[:side, :side]
    texture = [(yy // 2) % 2, np.ones_like(yy), (xx // 2) % 2][label]
    colour = rng.integers(150, 256, 3)
    img[y0:y0 + side, x0:x0 + side] = np.where(texture[..., None] > 0, colour, 30).astype(np.uint8)
    return img, (x0, y0, x0 + side, y0 + side)


def write_folder(root: Path, n_train: int, n_test: int, size=(32, 32), masked=lambda split, label, i: False,
                 masks: str | None = None, seed: int = 0) -> dict[str, tuple]:
    """An image folder ``root/{train,test}/<class>/img_XX.png`` of the three ``CLASSES``; images for which
    ``masked(split, label, i)`` get a mask: a PNG under ``root/masks`` (``masks="png"``) or a row of
    ``root/boxes.csv`` (``masks="csv"``). Returns every image's box by its path under ``root``."""
    rng = np.random.default_rng(seed)
    boxes, rows = {}, ["path,x0,y0,x1,y1"]
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, box = _draw(rng, label, *size)
                rel = f"{split}/{name}/img_{i:02d}.png"
                Image.fromarray(img).save(root / rel)
                boxes[rel] = box
                if masked(split, label, i) and masks == "png":
                    m = np.zeros(img.shape[:2], np.uint8)
                    m[box[1]:box[3], box[0]:box[2]] = 255
                    (root / "masks" / split / name).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(m).save(root / "masks" / rel)
                elif masked(split, label, i) and masks == "csv":
                    rows.append(f"{rel},{','.join(map(str, box))}")
    if masks == "csv":
        (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return boxes


def add_bad_files(root: Path) -> list[str]:
    """An empty file, random bytes and a truncated PNG, all with image names; returns their paths."""
    bad = {"train/solid/empty.jpg": b"", "train/vstripes/garbage.png": bytes(range(256)) * 4}
    good = (root / "test/hstripes/img_00.png").read_bytes()
    bad["test/hstripes/truncated.png"] = good[: len(good) // 2]
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    return sorted(bad)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    boxes = write_folder(root, 6, 4, size=(40, 40), masked=lambda s, c, i: i % 2 == 0, masks="png")
    png = root / "train/solid/img_05.png"  # one JPEG among the PNGs (decoded at a reduced scale first)
    with Image.open(png) as im:
        im.save(png.with_suffix(".jpg"), quality=95)
    png.unlink()
    return root, boxes, add_bad_files(root)


def _params(root: Path, **kw) -> DataParams:
    return DataParams(name="folder", root=str(root), image_size=16, **kw)


def test_counts_skipped_files_and_order(folder, tmp_path):
    root, _, bad = folder
    card = prepare(_params(root), tmp_path / "prepared")
    assert card["classes"] == CLASSES and card["image_shape"] == [3, 16, 16] and card["image_size"] == 16
    assert card["counts"]["train"] == 18 and card["counts"]["test"] == 12  # the bad files are not counted
    assert card["counts"]["train_per_class"] == [6, 6, 6] and card["counts"]["test_per_class"] == [4, 4, 4]
    assert card["skipped"]["images"] == 3 and card["skipped"]["masks"] == 0
    named = " ".join(card["skipped"]["first"])
    assert all(str(root / rel) in named for rel in bad) and f"{root / 'train/solid/empty.jpg'}: empty file" in named
    assert card["has_masks"] is False and card["mask_source"] is None and card["mask_counts"] == {"train": 0, "test": 0}
    data = load_prepared(tmp_path / "prepared")
    # Sorted classes, then sorted files: the first image is train/hstripes/img_00.png, squashed bilinearly.
    with Image.open(root / "train/hstripes/img_00.png") as im:
        want = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert (data.train.images[0] == want).all() and data.train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    x = data.train.images / 255.0  # normalisation statistics from the training split
    assert card["mean"] == pytest.approx(x.mean(axis=(0, 2, 3)), abs=1e-6)
    assert card["std"] == pytest.approx(x.std(axis=(0, 2, 3)), abs=1e-6)
    assert prepare(_params(root), tmp_path / "again")["sha256"] == card["sha256"]  # same folder, same bytes


def test_png_masks_for_some_images(folder, tmp_path):
    root, boxes, _ = folder
    card = prepare(_params(root, masks=str(root / "masks")), tmp_path / "prepared")
    assert card["mask_source"] == {"path": str(root / "masks"), "kind": "PNG tree"}
    assert card["has_masks"] is True and card["mask_counts"] == {"train": 9, "test": 6}
    assert "train_has_mask.npy" in card["files"] and "test_has_mask.npy" in card["files"]
    data = load_prepared(tmp_path / "prepared")
    assert data.train.has_mask.tolist() == [i % 2 == 0 for i in range(6)] * 3
    assert (data.train.masks[~data.train.masked] == 0).all()
    # A 40x40 mask resized with nearest neighbour to 16x16: the box, to within a pixel of the scaled box.
    x0, y0, x1, y1 = (v * 16 / 40 for v in boxes["train/hstripes/img_00.png"])
    rows, cols = np.flatnonzero(data.train.masks[0].any(1)), np.flatnonzero(data.train.masks[0].any(0))
    assert np.allclose([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1], [y0, y1, x0, x1], atol=1)
    # sigma analyses the test images with a mask first, then fills up with the others.
    assert select_images(data.test, 4).tolist() == [0, 2, 4, 6]
    assert select_images(data.test, 8).tolist() == [0, 1, 2, 3, 4, 6, 8, 10]


def test_masks_for_every_image_store_no_flags(tmp_path):
    root = tmp_path / "images"
    write_folder(root, 3, 2, masked=lambda s, c, i: True, masks="png")
    card = prepare(_params(root, masks=str(root / "masks")), tmp_path / "prepared")
    assert card["mask_counts"] == {"train": 9, "test": 6} and "train_has_mask.npy" not in card["files"]
    assert load_prepared(tmp_path / "prepared").test.has_mask is None


def test_csv_boxes_scaled_outwards_and_united(tmp_path):
    root = tmp_path / "images"
    write_folder(root, 3, 2, size=(40, 20))
    with open(root / "boxes.csv", "w") as f:
        f.write("path,x0,y0,x1,y1\n./train/hstripes/img_00.png,10,5,21,10\ntrain/hstripes/img_00.png,0,0,1,1\n"
                "\ntest/solid/img_01.png,30.5,2,40,20\n")
    card = prepare(_params(root, masks=str(root / "boxes.csv")), tmp_path / "prepared")
    assert card["mask_source"]["kind"] == "CSV boxes" and card["mask_counts"] == {"train": 1, "test": 1}
    data = load_prepared(tmp_path / "prepared")
    want = np.zeros((16, 16), np.uint8)
    want[4:8, 4:9] = 1  # x 10..21 of 40 -> cols floor(4.0)..ceil(8.4); y 5..10 of 20 -> rows 4..8
    want[0:1, 0:1] = 1  # the second box of the same image
    assert (data.train.masks[0] == want).all() and data.train.has_mask.tolist() == [True] + [False] * 8
    test_box = data.test.masks[np.flatnonzero(data.test.masked)[0]]
    assert test_box[1:16, 12:16].all() and test_box.sum() == 15 * 4  # cols floor(12.2)..16, rows floor(1.6)..16


def test_unreadable_mask_keeps_the_image(tmp_path):
    root = tmp_path / "images"
    write_folder(root, 3, 2, masked=lambda s, c, i: i == 0, masks="png")
    (root / "masks/test/solid/img_00.png").write_bytes(b"not a png")
    card = prepare(_params(root, masks=str(root / "masks")), tmp_path / "prepared")
    assert card["counts"]["test"] == 6 and card["skipped"] == {
        "images": 0, "masks": 1, "first": [f"{root / 'masks/test/solid/img_00.png'}: unreadable mask, image kept "
                                           "without one (UnidentifiedImageError: cannot identify image file "
                                           f"'{root / 'masks/test/solid/img_00.png'}')"]}
    assert card["mask_counts"] == {"train": 3, "test": 2}


def _empty_class(root):
    for f in (root / "test/solid").iterdir():
        f.unlink()
    (root / "test/solid/notes.txt").write_text("not an image")
    return "test/solid: empty class folder"


def _class_mismatch(root):
    (root / "train/extra").mkdir()
    (root / "train/extra/a.png").write_bytes((root / "train/solid/img_00.png").read_bytes())
    (root / "test/solid").rename(root / "test/other")
    return "classes differ from"


def _stray_png_mask(root):
    (root / "masks/train/solid").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "masks/train/solid/img_99.png")
    return "masks/train/solid/img_99.png: matches no image"


def _stray_csv_row(root):
    (root / "b.csv").write_text("path,x0,y0,x1,y1\ntrain/solid/img_00.png,0,0,4,4\ntrain/solid/nope.png,0,0,4,4\n")
    return "b.csv:3: train/solid/nope.png matches no image"


def _missing_root(root):
    import shutil

    shutil.rmtree(root)
    return "is not a directory"


def _split_linked_outside(root):
    (root / "test").rename(root.parent / "test_elsewhere")
    (root / "test").symlink_to(root.parent / "test_elsewhere")
    return f"{root / 'test'}: a symlink to {root.parent / 'test_elsewhere'}, outside data.root"


@pytest.mark.parametrize("damage, masks", [(_empty_class, None), (_class_mismatch, None), (_stray_png_mask, "masks"),
                                           (_stray_csv_row, "b.csv"), (_missing_root, None),
                                           (_split_linked_outside, None)],
                         ids=["empty_class", "class_mismatch", "stray_png_mask", "stray_csv_row", "missing_root",
                              "split_linked_outside"])
def test_bad_layout_stops_with_one_line_naming_the_path(tmp_path, damage, masks):
    root = tmp_path / "images"
    write_folder(root, 2, 2)
    expected = damage(root)
    with pytest.raises(KdlensError) as e:
        prepare(_params(root, masks=masks and str(root / masks)), tmp_path / "prepared")
    msg = str(e.value)
    assert "\n" not in msg and expected in msg and str(root) in msg, msg
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("masks, expected", [
    ("elsewhere", "must lie inside data.root"),
    ("images/notes.txt", "neither a directory of PNG masks nor a .csv"),
    ("images/absent", "does not exist"),
    ("images/empty", "holds no mask"),
    ("images/bad.csv", "the first row must be the header path,x0,y0,x1,y1"),
    ("images/flipped.csv", "flipped.csv:2: a box needs finite x0 < x1"),
])
def test_bad_masks_param(tmp_path, masks, expected):
    root = tmp_path / "images"
    write_folder(root, 2, 2)
    (tmp_path / "elsewhere").mkdir()
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("x")
    (root / "bad.csv").write_text("file,a,b,c,d\n")
    (root / "flipped.csv").write_text("path,x0,y0,x1,y1\ntrain/solid/img_00.png,5,0,4,4\n")
    with pytest.raises(KdlensError) as e:
        prepare(_params(root, masks=str(tmp_path / masks)), tmp_path / "prepared")
    assert "\n" not in str(e.value) and expected in str(e.value), str(e.value)


def test_class_whose_images_are_all_unreadable(tmp_path):
    root = tmp_path / "images"
    write_folder(root, 2, 2)
    for f in (root / "train/solid").iterdir():
        f.write_bytes(b"")
    with pytest.raises(KdlensError, match=r"train/solid: none of its images could be read"):
        prepare(_params(root), tmp_path / "prepared")


def _decoded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes from now on (the header alone is read by Image.open)."""
    sizes, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: sizes.append(im.size) or load(im))
    return sizes


def test_images_over_the_pixel_cap_are_skipped_before_decoding(tmp_path, monkeypatch, recwarn):
    root = tmp_path / "images"
    write_folder(root, 2, 2)
    # 1-bit PNGs of a few KB: 13000x13000 would decode to ~0.5 GB of RGB, under Pillow's own error limit
    # (it only warns); 14000x14000 is over it, so Image.open itself refuses it.
    Image.new("1", (13000, 13000)).save(root / "train/solid/bomb.png")
    Image.new("1", (14000, 14000)).save(root / "test/vstripes/huge.png")
    assert (root / "train/solid/bomb.png").stat().st_size < 100_000
    decoded = _decoded_sizes(monkeypatch)
    card = prepare(_params(root), tmp_path / "prepared")
    assert card["counts"]["train"] == 6 and card["counts"]["test"] == 6
    assert card["skipped"]["images"] == 2 and card["skipped"]["masks"] == 0
    bomb, huge = card["skipped"]["first"]
    assert bomb == (f"{root / 'train/solid/bomb.png'}: too large (13000x13000 = 169,000,000 pixels to decode, over "
                    "data.max_pixels: 64,000,000); shrink it or raise data.max_pixels")
    assert huge.startswith(f"{root / 'test/vstripes/huge.png'}: too large for Pillow to open (DecompressionBombError:")
    assert decoded and max(w * h for w, h in decoded) == 32 * 32  # only the small images were decoded
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_cap_counts_a_jpeg_after_its_draft_and_applies_to_masks(tmp_path):
    root = tmp_path / "images"
    write_folder(root, 2, 2, masked=lambda s, c, i: i == 0, masks="png")
    Image.new("RGB", (1100, 1000)).save(root / "train/solid/big.png")  # 1.1 MP: over a 1 MP cap
    # 1.92 MP, but a JPEG is decoded at a reduced scale (1/8 here: 200x150) since image_size is 16.
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(root / "train/vstripes/big.jpg")
    Image.new("L", (1100, 1000), 255).save(root / "masks/test/solid/img_00.png")
    card = prepare(_params(root, masks=str(root / "masks"), max_pixels=1_000_000), tmp_path / "prepared")
    assert card["counts"]["train_per_class"] == [2, 2, 3] and card["counts"]["test"] == 6
    assert card["skipped"] == {"images": 1, "masks": 1, "first": [
        f"{root / 'train/solid/big.png'}: too large (1100x1000 = 1,100,000 pixels to decode, over "
        "data.max_pixels: 1,000,000); shrink it or raise data.max_pixels",
        f"{root / 'masks/test/solid/img_00.png'}: mask too large (1100x1000 = 1,100,000 pixels to decode, over "
        "data.max_pixels: 1,000,000), image kept without one"]}
    assert card["mask_counts"] == {"train": 3, "test": 2}
    jpeg = load_prepared(tmp_path / "prepared").train.images[4]  # vstripes/big.jpg sorts before img_00.png
    assert np.abs(jpeg.astype(int) - np.array([200, 30, 30])[:, None, None]).max() <= 3
    from tiny_profile import tiny_params

    raw = tiny_params()
    raw["data"]["max_pixels"] = 999_999
    with pytest.raises(KdlensError, match=r"^params.yaml: data.max_pixels: Input should be greater than or equal"):
        parse_params(raw)


def test_symlinks_out_of_data_root_are_skipped_and_not_walked(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    write_folder(root, 2, 2, masked=lambda s, c, i: i == 0, masks="png")
    write_folder(outside, 2, 0, seed=1)  # elsewhere/train/<class>/img_XX.png, elsewhere/test/<class>/ empty
    (root / "train/solid/out.png").symlink_to(outside / "train/solid/img_00.png")
    (root / "train/solid/in.png").symlink_to(root / "test/solid/img_00.png")  # inside data.root: followed
    (root / "train/extra").symlink_to(outside / "train/hstripes")  # a class folder linked outside, in both
    (root / "test/extra").symlink_to(outside / "train/vstripes")
    (root / "train/hstripes/sub").symlink_to(outside / "train/solid", target_is_directory=True)
    (root / "store").mkdir()  # a class folder linked inside data.root: followed
    (root / "test/vstripes").rename(root / "store/vstripes")
    (root / "test/vstripes").symlink_to(root / "store/vstripes")
    (root / "masks/train/hstripes/img_00.png").unlink()
    (root / "masks/train/hstripes/img_00.png").symlink_to(outside / "train/hstripes/img_01.png")
    card = prepare(_params(root, masks=str(root / "masks")), tmp_path / "prepared")
    assert card["classes"] == CLASSES and card["counts"]["train_per_class"] == [2, 3, 2]
    assert card["counts"]["test_per_class"] == [2, 2, 2]
    assert card["skipped"] == {"images": 3, "masks": 1, "first": [
        f"{root / 'train/extra'}: a symlink to {outside / 'train/hstripes'}, outside data.root; not walked (copy "
        "the folder into data.root)",
        f"{root / 'test/extra'}: a symlink to {outside / 'train/vstripes'}, outside data.root; not walked (copy "
        "the folder into data.root)",
        f"{root / 'masks/train/hstripes/img_00.png'}: a symlink to {outside / 'train/hstripes/img_01.png'}, "
        "outside data.root; not read, image kept without a mask",
        f"{root / 'train/solid/out.png'}: a symlink to {outside / 'train/solid/img_00.png'}, outside data.root; "
        "not read (copy the file into data.root)"]}
    assert card["mask_counts"] == {"train": 2, "test": 3}


def test_masks_param_only_for_folder():
    from tiny_profile import tiny_params

    raw = tiny_params()
    raw["data"]["masks"] = "data/masks"
    with pytest.raises(KdlensError, match=r"^params.yaml: data: masks: only data.name: folder reads masks, not scenes"):
        parse_params(raw)
    raw["data"]["name"] = "folder"
    assert parse_params(raw).data.masks == "data/masks"


def test_split_masked_flags():
    images, labels = np.zeros((3, 3, 4, 4), np.uint8), np.zeros(3, np.int64)
    assert Split(images, labels).masked.tolist() == [False] * 3
    assert Split(images, labels, np.zeros((3, 4, 4), np.uint8)).masked.tolist() == [True] * 3
    flags = np.array([True, False, True])
    assert Split(images, labels, np.zeros((3, 4, 4), np.uint8), flags).masked.tolist() == flags.tolist()
    with pytest.raises(ValueError):
        Split(images, labels, None, flags)
