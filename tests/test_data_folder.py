"""A local image folder read with Pillow: both layouts, the held-out split made for a flat
folder, every image mode converted to RGB, and bad folders and files named in the error."""

import sys

import numpy as np
import PIL.Image
import pytest

from taco_jax.data import folder, source
from taco_jax.data.task import Task

COUNTS = {"bee": 10, "cow": 5, "elk": 2, "owl": 1}


def _save(path, image, mode="RGB"):
    """Write ``image`` (H, W, 3) uint8 in ``mode``; returns the RGB array Pillow reads back."""
    im = PIL.Image.fromarray(image).convert(mode)
    im.save(path)
    with PIL.Image.open(path) as back:
        return np.asarray(back.convert("RGB"))


@pytest.fixture
def flat(tmp_path):
    """root/<class>/<i>.<ext>: sizes, modes and formats differ; a stray text file and a hidden
    file are not images."""
    rng = np.random.default_rng(0)
    modes = [("RGB", "png"), ("L", "png"), ("RGBA", "png"), ("P", "png"), ("RGB", "bmp"),
             ("CMYK", "jpg")]
    written = {}
    for c, n in COUNTS.items():
        (tmp_path / c).mkdir()
        for i in range(n):
            mode, ext = modes[i % len(modes)]
            image = rng.integers(0, 256, (12 + i, 9 + 2 * i, 3), dtype=np.uint8)
            written[f"{c}/{i:02d}.{ext}"] = _save(tmp_path / c / f"{i:02d}.{ext}", image, mode)
    (tmp_path / "bee" / "notes.txt").write_text("not an image")
    (tmp_path / "bee" / ".hidden.png").write_bytes(b"")
    return tmp_path, written


def test_flat_folder_gets_a_seeded_stratified_held_out_split(flat, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # no TensorFlow needed
    root, written = flat
    folder.scan.cache_clear()
    data = folder.scan(str(root))
    assert data.classes == ("bee", "cow", "elk", "owl") and data.held_out_made
    train, test = data.splits["train"], data.splits["test"]
    # 20% of each class held out, at least one when a class has two images, none from one.
    np.testing.assert_array_equal(np.bincount(test[1], minlength=4), [2, 1, 1, 0])
    np.testing.assert_array_equal(np.bincount(train[1], minlength=4), [8, 4, 1, 1])
    rel = {str(p.relative_to(root)) for p in train[0] + test[0]}
    assert rel == set(written) and len(rel) == len(train[0]) + len(test[0])  # disjoint, complete
    for files, labels in (train, test):  # labels are the files' class folders
        assert [p.parent.name for p in files] == [data.classes[k] for k in labels]
    manifest = data.manifest()
    assert manifest["held_out"] == {"fraction": 0.2, "seed": 0}
    folder.scan.cache_clear()
    assert folder.scan(str(root)).manifest() == manifest  # the same split on every scan

    task = Task(source.IMAGE_FOLDER, ("cow", "bee"), str(root))
    keep, labels = task.examples("train")
    np.testing.assert_array_equal(np.bincount(labels), [4, 8])
    images = task.split("train").images(keep)
    for k, image in zip(keep, images, strict=True):
        want = written[str(train[0][k].relative_to(root))]
        assert image.dtype == np.uint8 and image.shape == want.shape and image.shape[2] == 3
        np.testing.assert_array_equal(image, want)
    batches = list(task.split("train").image_batches(keep, 5))
    assert [len(b[1]) for b in batches] == [5, 5, 2]
    np.testing.assert_array_equal(batches[1][1][0], images[5])
    np.testing.assert_array_equal(np.bincount(task.few_shot(2, seed=1).labels), [2, 2])
    with pytest.raises(ValueError, match=r"has no split 'val'; it has \['test', 'train'\]"):
        task.split("val")


def test_split_folders_with_another_split_name(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                PIL.Image.new("L", (5, 4), color=i * 40).save(tmp_path / split / c / f"{i}.png")
    folder.scan.cache_clear()
    data = folder.scan(str(tmp_path))
    assert not data.held_out_made and sorted(data.splits) == ["train", "val"]
    task = Task(source.IMAGE_FOLDER, (), str(tmp_path), test_split="val")
    x, y = task.load("val")
    assert x.shape == (4, 4, 5, 3) and y.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(x[1], np.full((4, 5, 3), 40, np.uint8))


def test_bad_folders_and_files_are_named(tmp_path):
    folder.scan.cache_clear()
    with pytest.raises(FileNotFoundError, match="image folder '/no/such/root' does not exist"):
        folder.scan("/no/such/root")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no class folders"):
        folder.scan(str(tmp_path / "empty"))
    (tmp_path / "r" / "cat").mkdir(parents=True)
    (tmp_path / "r" / "dog").mkdir()
    PIL.Image.new("RGB", (3, 3)).save(tmp_path / "r" / "cat" / "0.png")
    with pytest.raises(ValueError, match=r"class folder '.*r/dog' holds no images"):
        folder.scan(str(tmp_path / "r"))
    (tmp_path / "r" / "dog" / "0.png").write_bytes(b"")  # 0-byte images: named by the scan
    (tmp_path / "r" / "dog" / "1.png").write_bytes(b"")
    folder.scan.cache_clear()
    with pytest.raises(ValueError, match=r"'.*r/dog' holds 2 empty \(0-byte\) image file\(s\): "
                                         r"0\.png, 1\.png"):
        folder.scan(str(tmp_path / "r"))
    for name in ("0.png", "1.png"):  # not images: named when read
        (tmp_path / "r" / "dog" / name).write_bytes(b"not a png")
    folder.scan.cache_clear()
    split = source.open_split(source.IMAGE_FOLDER, "train", str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"cannot read image '.*r/dog/[01]\.png'"):
        split.images(range(split.num_examples))
    with pytest.raises(ValueError, match="needs data_dir"):
        Task(source.IMAGE_FOLDER, ("cat",)).source_class_ids()


def test_bad_files_are_skipped_and_listed_only_when_asked(tmp_path, caplog):
    """skip_bad_files: empty and unreadable files (a text file named .jpg, a PNG cut after
    its signature) are left out, logged and listed in the manifest; the good ones keep their
    labels; without it the same folder is refused, naming the flag."""
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            _save(tmp_path / c / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "dog" / "empty.png").write_bytes(b"")
    (tmp_path / "dog" / "text.jpg").write_text("not an image")
    good = (tmp_path / "cat" / "0.png").read_bytes()
    (tmp_path / "cat" / "cut.png").write_bytes(good[:12])
    folder.scan.cache_clear()
    source.open_split.cache_clear()
    with pytest.raises(ValueError, match=r"empty \(0-byte\).*task.skip_bad_files"):
        folder.scan(str(tmp_path))
    with caplog.at_level("WARNING"):
        data = folder.scan(str(tmp_path), skip_bad=True)
    assert sorted(p.name for p in data.skipped) == ["cut.png", "empty.png", "text.jpg"]
    assert "skipped 3 empty or unreadable file(s)" in caplog.text
    assert sorted(data.manifest()["skipped"]) == ["cat/cut.png", "dog/empty.png", "dog/text.jpg"]
    task = Task(source.IMAGE_FOLDER, (), str(tmp_path), skip_bad_files=True)
    images, labels = [], []
    for split in ("train", "test"):
        s = task.split(split)
        images += s.images(range(s.num_examples))
        labels += s.labels().tolist()
    assert len(images) == 12 and sorted(labels) == [0] * 6 + [1] * 6
    assert all(im.shape == (8, 8, 3) for im in images)
