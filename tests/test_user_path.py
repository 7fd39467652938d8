"""A user's own model and images through the launchers, at smoke scale: a converted checkpoint
(3-channel, 32 px, its own eval recipe) and a flat image folder of mixed sizes and modes, with
no TensorFlow and no embedded data involved."""

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from flax import nnx

from configs.dcvit import demo as dcvit_demo
from configs.taco import demo as taco_demo
from configs.transfer import demo as transfer_demo
from taco_jax import convert, models
from taco_jax.data import folder, preprocess, subtasks
from taco_jax.export import specialist
from taco_jax.methods import transfer
from taco_jax.models import paths
from taco_jax.models.preprocess import Preprocess
from taco_jax.models.stats import param_count
from taco_jax.run import common, evaluate
from taco_jax.run import dcvit as dcvit_run
from taco_jax.run import taco as taco_run
from taco_jax.run import transfer as transfer_run

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("maple", "oak", "pine")
PER_CLASS = 15  # 12 train, 3 test after the flat folder's 80/20 split
# The checkpoint's own recipe: resize the shorter side to 36, center-crop 32, bicubic.
RECIPE = Preprocess(32, 36, "bicubic", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """root/<class>/<i>.<ext>: each class a dominant colour, sizes from 30x41 to 80x52, RGB,
    grey, RGBA and palette PNGs and JPEGs."""
    root = tmp_path_factory.mktemp("leaves")
    rng = np.random.default_rng(0)
    modes = [("RGB", "png"), ("L", "png"), ("RGBA", "png"), ("P", "png"), ("RGB", "jpg")]
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            h, w = 30 + 3 * i, 41 + (7 * i) % 40
            image = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            image[..., c] += 150
            mode, ext = modes[i % len(modes)]
            PIL.Image.fromarray(image).convert(mode).save(root / name / f"{i:02d}.{ext}")
    folder.scan.cache_clear()
    return root


def _checkpoint(directory: Path, arch: str, labels=None, **overrides) -> Path:
    model = models.create(arch, num_classes=6, rngs=nnx.Rngs(1), **overrides)
    model.preprocess = RECIPE
    spec = convert.ModelSpec(arch, 6, overrides)
    return convert.save_checkpoint(model, spec, directory, labels=labels)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet", "resnet_mini", in_chans=3,
                       img_size=32)


def _metadata_only_checkpoint(directory: Path, arch: str) -> str:
    """A checkpoint directory with model.json and an empty state/: all a parse reads."""
    (directory / "state").mkdir(parents=True)
    (directory / "model.json").write_text(json.dumps(
        {"format": 1, "arch": arch, "num_classes": 1000, "overrides": {},
         "preprocess": RECIPE.to_dict()}))
    return str(directory)


def _user_config(config, checkpoint: Path, image_folder: Path):
    config.model.checkpoint = str(checkpoint)
    config.task.dataset = "image_folder"
    config.task.data_dir = str(image_folder)
    config.task.classes = ()
    return config


def test_task_images_go_through_the_checkpoints_recipe(checkpoint, image_folder, tmp_path):
    """Every image is resized, cropped and converted to the model's 3 channels as its recipe
    says; without labels in the checkpoint the teacher is a linear probe."""
    config = _user_config(taco_demo.get_config("runlocal"), checkpoint, image_folder)
    src = common.parse_source(config)
    assert src.model.arch == "resnet_mini" and src.model.labels is None
    model, info, data = common.load_task_data(config, src, tmp_path)
    assert model.preprocess == RECIPE and info["path"] == str(checkpoint)
    assert data.class_names == CLASSES and data.class_ids is None
    assert data.train_images.shape == (36, 32, 32, 3) and data.test_images.shape == (9, 32, 32, 3)
    manifest = json.loads((tmp_path / "task_files.json").read_text())
    assert manifest["held_out"] == {"fraction": 0.2, "seed": 0}
    # Test image 0 by hand: PIL's own bicubic resize of the shorter side to 36, then the crop.
    files = folder.scan(str(image_folder)).splits["test"][0]
    with PIL.Image.open(files[0]) as im:
        im = im.convert("RGB")
        w, h = im.size
        size = (36, int(36 * h / w)) if w <= h else (int(36 * w / h), 36)
        ref = np.asarray(im.resize(size, PIL.Image.BICUBIC), np.int32)
    top, left = round((ref.shape[0] - 32) / 2), round((ref.shape[1] - 32) / 2)
    diff = np.abs(data.test_images[0].astype(np.int32) - ref[top:top + 32, left:left + 32])
    assert diff.max() <= 1  # rounding of PIL's fixed-point arithmetic


def test_checkpoint_labels_restrict_the_classifier_by_name(image_folder, tmp_path):
    labels = ("birch", "pine", "cedar", "maple", "fir", "oak")
    ckpt = _checkpoint(tmp_path / "named", "resnet_mini", labels=labels, in_chans=3,
                       img_size=32)
    config = _user_config(taco_demo.get_config("runlocal"), ckpt, image_folder)
    src = common.parse_source(config)
    assert src.model.labels == labels
    _, _, data = common.load_task_data(config, src, tmp_path)
    np.testing.assert_array_equal(data.class_ids, [3, 5, 1])  # maple, oak, pine


def test_bad_checkpoint_and_folder_are_named_before_work(tmp_path, image_folder):
    config = taco_demo.get_config("runlocal")
    config.model.checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"config.model.checkpoint=.*nowhere.*no model.json"):
        taco_run.parse(config)
    config = taco_demo.get_config("runlocal")
    config.task.dataset, config.task.data_dir = "image_folder", str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"config.task \(dataset='image_folder'.*empty"):
        taco_run.parse(config)
    config.task.data_dir, config.task.classes = str(image_folder), ("maple", "palm")
    with pytest.raises(ValueError, match="class 'palm' is not in 'image_folder'"):
        taco_run.parse(config)


def test_launch_taco_checkpoint_and_image_folder(checkpoint, image_folder, tmp_path):
    """The launcher end to end on the user's inputs; the report names them."""
    workdir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "launch.taco", "--config=configs/taco/demo.py:runlocal",
         f"--config.model.checkpoint={checkpoint}", "--config.task.dataset=image_folder",
         f"--config.task.data_dir={image_folder}", "--config.task.classes=()",
         "--config.schedule=()", "--config.recover.steps=4", "--config.baselines=()",
         "--config.latency_batch=2", f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["model"] == str(checkpoint) and report["generalist"]["arch"] == "resnet_mini"
    assert report["task"]["classes"] == list(CLASSES) and report["task"]["test_images"] == 9
    assert report["adapt"]["method"] == "linear_probe"
    assert report["sparsity"]["pruned_layers"]["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert (workdir / "task_files.json").exists() and report["specialist"] == "specialist"
    assert report["environment"]["peak_rss_mib"] > 100  # a JAX process: well over 100 MiB
    assert "peak memory" in out.stderr

    # The specialist comes back from the workdir alone: the report's top-1, exactly.
    out = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    top1 = report["compressed"]["top1"]
    assert f"specialist top-1 {top1:.2f}% on 9 images (test split); report.json: {top1:.2f}%" \
        in out.stdout
    assert evaluate.evaluate_workdir(workdir)["top1"] == top1
    # ... classifies new images ...
    n = evaluate.predict_folder(workdir, image_folder, tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert n == len(rows) == 3 * PER_CLASS and {r["class"] for r in rows} <= set(CLASSES)
    model, meta = specialist.load_specialist(workdir / "specialist")
    assert meta["labels"] == list(CLASSES) and model.preprocess == RECIPE
    x = preprocess.to_input_size([folder.decode(Path(rows[0]["path"]))], RECIPE)
    logits = np.asarray(model(preprocess.for_model(model)(x)))[0]
    assert rows[0]["class"] == CLASSES[int(logits.argmax())]
    # ... and is a model a new run starts from, its labels naming the task's classes.
    config = _user_config(taco_demo.get_config("runlocal"), workdir / "specialist", image_folder)
    assert common.parse_source(config).model.labels == CLASSES


def test_dcvit_on_a_vit_checkpoint_and_image_folder(image_folder, tmp_path):
    ckpt = _checkpoint(tmp_path / "vit", "vit_mini", in_chans=3, img_size=32)
    config = _user_config(dcvit_demo.get_config("runlocal"), ckpt, image_folder)
    config.shots = 4
    config.then_prune.sparsity, config.baseline_drop_blocks = 0.0, 0
    config.recover.steps, config.latency.batch = 3, 2
    report = dcvit_run.run_dcvit(config, tmp_path / "run")
    assert report["model"] == str(ckpt) and report["task"]["classes"] == list(CLASSES)
    assert report["compressed"]["params"] < report["dense"]["params"]
    assert "sparsity" not in report  # a cut without then_prune has no zeros to count
    assert report["specialist"] == "specialist"  # attention removed, rebuilt from model.json
    assert evaluate.evaluate_workdir(tmp_path / "run")["top1"] == report["compressed"]["top1"]
    again = dcvit_run.run_dcvit(config, tmp_path / "run")  # finished: its report, as written
    assert again == json.loads(json.dumps(report, default=float))


def test_transfer_from_a_checkpoint_with_an_image_folder_pool(checkpoint, image_folder,
                                                              tmp_path):
    config = _user_config(transfer_demo.get_config("runlocal"), checkpoint, image_folder)
    config.pool.dataset, config.pool.data_dir = "image_folder", str(image_folder)
    config.shots, config.transfer_size, config.baselines = 4, 10, ()
    config.distill.steps, config.finetune.steps, config.latency_batch = 3, 2, 2
    config.student_overrides = {"widths": (8, 16, 32), "layers": (1, 1, 1), "in_chans": 3,
                                "img_size": 32}
    report = transfer_run.run_transfer(config, tmp_path / "run")
    assert report["model"] == str(checkpoint) and report["adapt"]["method"] == "linear_probe"
    assert report["task"]["classes"] == list(CLASSES)
    assert evaluate.evaluate_workdir(tmp_path / "run")["top1"] == report["compressed"]["top1"]
    again = transfer_run.run_transfer(config, tmp_path / "run")  # finished: its report
    assert again == json.loads(json.dumps(report, default=float))


def test_transfer_student_from_a_checkpoint_keeps_its_weights_and_probes_a_task_head(
        checkpoint, image_folder, tmp_path):
    """``student_checkpoint``: every fresh student is the checkpoint's body (weights equal) with
    a new 3-way head fit on the labelled images, independent copies; the run reports and
    rebuilds that student."""
    student_ckpt = _checkpoint(tmp_path / "student", "resnet_mini", in_chans=3, img_size=32,
                               widths=(8, 16, 32), layers=(1, 1, 1))
    student, _ = convert.load_checkpoint(student_ckpt)
    config = transfer.TransferConfig(student_checkpoint=str(student_ckpt))
    shots_x = np.stack([preprocess.to_input_size([folder.decode(f)], RECIPE)[0]
                        for c in CLASSES for f in sorted((image_folder / c).iterdir())[:3]])
    shots_y = np.repeat(np.arange(3), 3)
    new = transfer._student_factory(config, RECIPE, shots_x, shots_y, 3,
                                    preprocess.for_model(student))
    a, b = new(), new()
    np.testing.assert_array_equal(a.conv1.kernel.value, student.conv1.kernel.value)
    assert a.fc.kernel.value.shape == (student.fc.in_features, 3)
    a.conv1.kernel.value = a.conv1.kernel.value + 1.0
    np.testing.assert_array_equal(b.conv1.kernel.value, student.conv1.kernel.value)
    logits = np.asarray(b(preprocess.for_model(b)(shots_x)))
    assert np.mean(logits.argmax(1) == shots_y) > 0.5  # the probe fits the labelled images

    run = _user_config(transfer_demo.get_config("runlocal"), checkpoint, image_folder)
    run.pool.dataset, run.pool.data_dir = "image_folder", str(image_folder)
    run.shots, run.transfer_size, run.baselines = 4, 10, ()
    run.distill.steps, run.finetune.steps, run.latency_batch = 2, 1, 2
    run.student_checkpoint = str(student_ckpt)
    report = transfer_run.run_transfer(run, tmp_path / "run")
    assert report["student"] == str(student_ckpt)
    assert report["cost"]["student"]["params"] == param_count(b)
    assert evaluate.evaluate_workdir(tmp_path / "run")["top1"] == report["compressed"]["top1"]


def test_transfer_student_checkpoint_is_checked_before_work(checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"student_checkpoint=.*nowhere.*no model.json"):
        transfer.TransferConfig(student_checkpoint=str(tmp_path / "nowhere"))
    model = models.create("resnet_mini", num_classes=6, rngs=nnx.Rngs(1), in_chans=3)
    model.preprocess = Preprocess(48, 54)
    bigger = convert.save_checkpoint(model, convert.ModelSpec("resnet_mini", 6, {"in_chans": 3}),
                                     tmp_path / "s")
    config = transfer.TransferConfig(student_checkpoint=str(bigger))
    with pytest.raises(ValueError, match=r"takes 48 px.*the teacher 32 px.*teacher's size"):
        transfer._student_factory(config, RECIPE, np.zeros((1, 32, 32, 3), np.uint8),
                                  np.zeros(1, int), 3, lambda x: x)


@pytest.mark.parametrize("family, arch, student", [
    ("resnet50", "resnet50", "resnet18"), ("vit_s16", "vit_small_patch16_224",
                                           "vit_tiny_patch16_224"),
    ("convnext_t", "convnext_tiny", "resnet18")])
def test_transfer_family_configs_parse_for_a_checkpoint_of_their_family(
        family, arch, student, image_folder, tmp_path):
    """The teacher's checkpoint, the task folder and the pool folder are all a run needs; the
    cpu variant is the small budget."""
    config = importlib.import_module(f"configs.transfer.{family}").get_config("cpu")
    with pytest.raises(ValueError, match=r"config\.model\.checkpoint is empty"):
        transfer_run.parse(config)
    config.model.checkpoint = _metadata_only_checkpoint(tmp_path / "ckpt", arch)
    config.task.data_dir = str(image_folder)
    config.pool.data_dir = str(image_folder)
    cfg, src, pool_task = transfer_run.parse(config)
    assert src.model.arch == arch and cfg.student == student and not cfg.student_overrides
    assert (cfg.shots, cfg.transfer_size, cfg.distill.steps, cfg.finetune.steps) == (16, 96, 30, 10)
    assert pool_task.class_names() == list(CLASSES)


@pytest.mark.parametrize("family, arch, learning_rate", [
    ("resnet50", "resnet50", 1e-4), ("vit_s16", "vit_small_patch16_224", 3e-5),
    ("vit_b16", "vit_base_patch16_224", 3e-5), ("convnext_t", "convnext_tiny", 3e-5)])
def test_family_configs_parse_for_a_checkpoint_of_their_family(family, arch, learning_rate,
                                                                image_folder, tmp_path):
    """Only the checkpoint and the folder are needed (no weights are read to parse); the cpu
    variant is the small budget, and a missing checkpoint is named."""
    module = importlib.import_module(f"configs.taco.{family}")
    config = module.get_config("cpu")
    with pytest.raises(ValueError, match=r"config\.model\.checkpoint is empty"):
        taco_run.parse(config)
    config.model.checkpoint = _metadata_only_checkpoint(tmp_path / "ckpt", arch)
    config.task.data_dir = str(image_folder)
    taco_config, src = taco_run.parse(config)
    assert src.model.arch == arch and src.task.class_names() == list(CLASSES)
    assert taco_config.recover.learning_rate == learning_rate
    assert (taco_config.shots, taco_config.recover.steps, len(taco_config.levels())) == (16, 30, 1)
    assert taco_config.baselines == ("magnitude", "task_agnostic")
    assert paths.resolve_stem(src.model.abstract(), taco_config.prune.overrides) == {
        {"resnet50": "conv1", "convnext_t": "stem.0"}.get(family, "patch_embed.proj"): 0.0}
    full, _ = taco_run.parse(_user_config(module.get_config(), tmp_path / "ckpt", image_folder))
    assert full.recover.steps > taco_config.recover.steps and len(full.levels()) > 1


def _small_taco(config, shots: int):
    """The smallest TACO run: one level, a few recovery steps, no baselines or timing."""
    config.shots, config.schedule, config.recover.steps = shots, (), 3
    config.baselines, config.latency_batch = (), 0
    return config


def test_taco_sweep_runs_on_the_checkpoint_after_the_main_run(checkpoint, image_folder, tmp_path):
    """``config.sweep``: the generalist is kept for the sweep (a plain run hands it over to
    ``compress``), which compresses it again at each other sparsity."""
    config = _small_taco(_user_config(taco_demo.get_config("runlocal"), checkpoint, image_folder),
                         shots=4)
    config.prune.sparsity, config.sweep = 0.5, (0.5, 0.75)
    report = taco_run.run_taco(config, tmp_path / "run")
    points = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert np.allclose([p["sparsity"] for p in points], [0.5, 0.75], atol=0.02)
    assert points[0]["taco_top1"] == report["compressed"]["top1"]


def test_taco_on_an_imagenet_layout_folder_subtask_restricts_the_head_by_wnid(tmp_path):
    """root/{train,val}/<wnid>/*, a built-in subtask naming its classes, an ImageNet-1k
    checkpoint labelled by wnid: the head is restricted to the subtask's rows (TACO's method,
    no probe), and only the subtask's folders are read."""
    wnids = subtasks.imagenet_wnids()
    fungi = subtasks.imagenet_subtask_info("fungi")
    others = [w for w in wnids[:40] if w not in fungi["wnids"]][:2]
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("val", 2)):
        for c, wnid in enumerate([*fungi["wnids"], *others]):
            (tmp_path / "imagenet" / split / wnid).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 255, (34 + i, 40, 3), dtype=np.uint8)
                image[..., c % 3] //= 3
                PIL.Image.fromarray(image).save(tmp_path / "imagenet" / split / wnid / f"{i}.png")
    model = models.create("resnet_mini", num_classes=1000, rngs=nnx.Rngs(1), in_chans=3,
                          img_size=32)
    model.preprocess = RECIPE
    ckpt = convert.save_checkpoint(model, convert.ModelSpec("resnet_mini", 1000,
                                                            {"in_chans": 3, "img_size": 32}),
                                   tmp_path / "ckpt", labels=list(wnids))
    config = _user_config(taco_demo.get_config("runlocal"), ckpt, tmp_path / "imagenet")
    config.task.subtask, config.task.test_split = "fungi", "val"
    folder.scan.cache_clear()
    report = taco_run.run_taco(_small_taco(config, shots=2), tmp_path / "run")
    assert report["adapt"]["method"] == "restrict"
    assert report["task"]["classes"] == fungi["wnids"]
    assert report["task"]["source_class_ids"] == fungi["class_ids"]
    assert report["task"]["test_images"] == 2 * len(fungi["wnids"])
    assert evaluate.evaluate_workdir(tmp_path / "run")["top1"] == report["compressed"]["top1"]


def test_taco_on_a_tfds_array_record_directory_with_a_labelled_checkpoint(tmp_path):
    """A prepared tfds builder directory (array_record, read without TensorFlow) named by
    path, three of its four classes, a checkpoint whose labels hold them: restricted by name."""
    from test_data_task import FilesBuilder, _write_folder

    _write_folder(tmp_path / "files")
    FilesBuilder.ROOT = tmp_path / "files"
    FilesBuilder(data_dir=str(tmp_path / "tfds"), file_format="array_record"
                 ).download_and_prepare()
    builder_dir = next((tmp_path / "tfds").glob("files_builder/*/dataset_info.json")).parent
    labels = ["ant", "owl", "bee", "cat", "dog", "elk"]
    ckpt = _checkpoint(tmp_path / "ckpt", "resnet_mini", labels=labels, in_chans=3, img_size=32)
    config = _user_config(taco_demo.get_config("runlocal"), ckpt, tmp_path)
    config.task.dataset, config.task.data_dir = str(builder_dir), ""
    config.task.classes = ("dog", "owl", "cat")
    report = taco_run.run_taco(_small_taco(config, shots=2), tmp_path / "run")
    assert report["adapt"]["method"] == "restrict"
    assert report["task"]["classes"] == ["dog", "owl", "cat"]
    assert report["task"]["source_class_ids"] == [4, 1, 3]  # the checkpoint's rows, by name
    assert report["task"]["test_images"] == 8  # 3 dog, 2 owl, 3 cat
    assert evaluate.evaluate_workdir(tmp_path / "run")["top1"] == report["compressed"]["top1"]
