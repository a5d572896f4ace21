"""Data streamed from disk (data.name: imagenet, or a folder with data.storage: stream): the index that
prepare_data writes, views that are a pure function of (seed, epoch, index) whatever the workers and
ranks, and one-line errors when the folder no longer matches its index."""
import gc
import shutil

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from core.errors import KdlensError
from dataset import load_prepared, loader_for, prepare
from dataset.params import DataParams
from dataset.stream import IMAGENET_MEAN, StreamSplit, train_view

pytestmark = pytest.mark.cost(8)

CLASSES = ("n01440764", "n01443537", "n01484850")
SIDE = 32


def write_imagenet(root, train=5, val=2, classes=CLASSES, seed=0):
    """An ImageNet-layout folder of JPEGs of varied sizes (smooth content, as photos), one corrupt file."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for wnid in classes:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(40, 160, 2))
                low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                im = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
                im.save(folder / f"{wnid}_{i}.JPEG", quality=90)
    (root / "train" / classes[0] / "broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """(root, prepared dir): the folder and its index."""
    base = tmp_path_factory.mktemp("stream")
    root = write_imagenet(base / "imagenet")
    prepare(DataParams(name="imagenet", root=str(root), image_size=SIDE, workers=2), base / "prepared")
    return root, base / "prepared"


def _batches(prepared, workers, epoch, rank=0, ranks=1, augment=True):
    data = load_prepared(prepared, workers)
    loader = loader_for(data.train, data.card["mean"], data.card["std"], 4, torch.device("cpu"), augment=augment,
                        shuffle=augment, seed=3, drop_last=True)
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in loader.batches(epoch, rank, ranks)]


def test_index_lists_readable_files_and_counts_the_rest(imagenet):
    root, prepared = imagenet
    data = load_prepared(prepared)
    card = data.card
    assert card["storage"] == "stream" and card["classes"] == list(CLASSES)
    assert card["counts"]["train_per_class"] == [5, 5, 5] and card["counts"]["test"] == 6
    assert card["skipped"]["images"] == 1 and "broken.JPEG: unreadable" in card["skipped"]["first"][0]
    assert card["mean"] == IMAGENET_MEAN  # what torchvision's pretrained teachers expect
    assert isinstance(data.train, StreamSplit) and data.input_size == SIDE
    assert data.train.files[0].decode() == f"train/{CLASSES[0]}/{CLASSES[0]}_0.JPEG"
    assert not (prepared / "train_images.npy").exists()  # an index, not pixels
    assert data.test.images_at([0, 5]).shape == (2, 3, SIDE, SIDE)


def test_an_image_edited_in_place_changes_the_listing_hash(imagenet, tmp_path):
    root, prepared = imagenet
    copy = shutil.copytree(root, tmp_path / "copy")
    before = load_prepared(prepared).card["sha256"]
    same = prepare(DataParams(name="imagenet", root=str(copy), image_size=SIDE, workers=1), tmp_path / "a")
    assert same["sha256"] == before  # the listing is relative to data.root: the same images, the same hash
    target = copy / "val" / CLASSES[1] / f"{CLASSES[1]}_0.JPEG"
    Image.open(copy / "val" / CLASSES[2] / f"{CLASSES[2]}_1.JPEG").save(target, quality=90)
    assert prepare(DataParams(name="imagenet", root=str(copy), image_size=SIDE, workers=1),
                   tmp_path / "b")["sha256"] != before


def test_views_do_not_depend_on_workers_or_ranks_and_leave_the_callers_generator_alone(imagenet):
    _, prepared = imagenet
    torch.manual_seed(11)
    expected_draw = torch.rand(3)
    torch.manual_seed(11)
    in_process = _batches(prepared, 0, epoch=1)
    assert torch.equal(torch.rand(3), expected_draw)  # drawing the views consumed none of the caller's numbers
    with_workers = _batches(prepared, 2, epoch=1)
    assert len(in_process) == 3 and all(x.shape == (4, 3, SIDE, SIDE) for x, _, _ in in_process)
    for (xa, ya, ia), (xb, yb, ib) in zip(in_process, with_workers):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    # Two ranks' shares of every batch are disjoint and make up the one-process batch, views included.
    shares = [_batches(prepared, 1, epoch=1, rank=r, ranks=2) for r in range(2)]
    for step, (x, _, idx) in enumerate(in_process):
        got = torch.cat([shares[0][step][2], shares[1][step][2]])
        views = torch.cat([shares[0][step][0], shares[1][step][0]])
        order = [got.tolist().index(i) for i in idx.tolist()]
        assert torch.equal(views[order], x)
    # Another epoch: another order and other crops of the same images.
    other = _batches(prepared, 0, epoch=2)
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(in_process, other))
    # The test views are fixed: un-augmented, unshuffled loaders give the same pixels in any epoch.
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_batches(prepared, 0, 1, augment=False),
                                                      _batches(prepared, 0, 5, augment=False)))


def test_a_streamed_loaders_workers_stop_as_soon_as_it_goes(imagenet):
    """No reference cycle holds a loader and its persistent workers until the garbage collector, which
    finalises the workers' queues first and then waits out a 5 s join timeout per worker."""
    _, prepared = imagenet
    before = set(psutil.Process().children())
    gc.disable()  # what is measured: freed by reference counting, not by a collection
    try:
        data = load_prepared(prepared, 2)
        loader = loader_for(data.train, data.card["mean"], data.card["std"], 4, torch.device("cpu"), augment=True,
                            shuffle=True)
        assert len(list(loader.batches(0))) == 4
        workers = [p for p in psutil.Process().children() if p not in before]
        assert len(workers) == 2
        del loader
        _, alive = psutil.wait_procs(workers, timeout=2)
        assert not alive, "the workers outlived their loader"
    finally:
        gc.enable()


def test_draft_decoding_keeps_the_view_of_a_large_jpeg(tmp_path):
    # A 1024-px photo-like JPEG to a 32-px view: decoded at 1/8 scale, yet within a few levels of the
    # full decode, and the same crop (no shift: the box is scaled with the image).
    rng = np.random.default_rng(1)
    low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(low).resize((1024, 768), Image.Resampling.BICUBIC).save(tmp_path / "big.jpg", quality=95)
    with Image.open(tmp_path / "big.jpg") as im:
        drafted = train_view(im, SIDE, 0, 1, 7).float()
    with Image.open(tmp_path / "big.jpg") as im:
        im.load()  # decoded in full: draft() no longer applies
        full = train_view(im, SIDE, 0, 1, 7).float()
    assert (drafted - full).abs().mean() < 3.0


def test_bad_folders_and_params_stop_with_one_line(imagenet, tmp_path):
    root, prepared = imagenet
    with pytest.raises(KdlensError, match=r"val is missing; put each class's images in .*val/<class>/"):
        no_val = tmp_path / "no_val"
        shutil.copytree(root / "train", no_val / "train")
        prepare(DataParams(name="imagenet", root=str(no_val), image_size=SIDE), tmp_path / "p")
    with pytest.raises(ValidationError, match="does not fit in memory"):
        DataParams(name="imagenet", storage="memory")
    with pytest.raises(ValidationError, match="only folder and imagenet stream"):
        DataParams(name="cifar100", storage="stream")
    # The folder moved after prepare_data: loading names data.root; a file gone names the file.
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    index = tmp_path / "index"
    prepare(DataParams(name="imagenet", root=str(moved), image_size=SIDE, workers=1), index)
    gone = moved / "train" / CLASSES[1] / f"{CLASSES[1]}_2.JPEG"
    gone.unlink()
    with pytest.raises(KdlensError, match=f"{gone}: unreadable .*re-run dvc repro -f prepare_data"):
        _batches(index, 0, epoch=1)
    shutil.rmtree(moved)
    with pytest.raises(KdlensError, match=f"data.root: {moved} .* is not a directory here"):
        load_prepared(index)


def test_a_streamed_folder_has_its_own_normalisation(tmp_path):
    # data.name: folder + storage: stream takes train/ and test/ and computes the folder's mean/std.
    root = tmp_path / "folder"
    write_imagenet(root)
    (root / "val").rename(root / "test")
    card = prepare(DataParams(name="folder", storage="stream", root=str(root), image_size=SIDE, workers=1),
                   tmp_path / "prepared")
    assert card["storage"] == "stream" and card["counts"]["train"] == 15
    assert card["mean"] != IMAGENET_MEAN and all(0.0 < m < 1.0 for m in card["mean"] + card["std"])
