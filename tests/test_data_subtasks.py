"""Built-in ImageNet subtasks: the shipped class lists and the WordNet derivation."""

import pytest

from taco_jax.data import make_imagenet_subtasks as make
from taco_jax.data import subtasks


def test_shipped_lists_match_known_figures_and_tfds_labels():
    wnids = subtasks.imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764"
    dogs = subtasks.imagenet_subtask_info("dogs")
    assert dogs["class_ids"] == list(range(151, 269))  # the 118 breeds of ImageNet-1k
    counts = {n: len(subtasks.imagenet_subtask_info(n)["class_ids"])
              for n in subtasks.imagenet_subtask_names()}
    assert counts["birds"] == 59 and counts["fungi"] == 7 and counts["vehicles"] == 67
    for name in subtasks.imagenet_subtask_names():
        info = subtasks.imagenet_subtask_info(name)
        assert info["class_ids"] == sorted(set(info["class_ids"]))
        assert info["wnids"] == [wnids[i] for i in info["class_ids"]]
    info = subtasks.imagenet_subtask_info("fungi")
    assert "agaric" in info["class_names"] and "bolete" in info["class_names"]


def test_builtin_task_and_unknown_name():
    task = subtasks.imagenet_subtask("dogs", data_dir="/data/tfds")
    assert task.dataset == "imagenet2012" and task.classes[:2] == (151, 152)
    assert task.test_split == "validation"
    with pytest.raises(ValueError, match="unknown ImageNet subtask 'cars'; built-in: birds"):
        subtasks.imagenet_subtask("cars")


def test_derivation_follows_every_is_a_path():
    # entity -> animal -> dog -> {pug, terrier}; terrier is also a "hunting animal" (two
    # parents); cat is an animal but not a dog.
    is_a = ["e animal", "animal dog", "dog pug", "dog terrier", "e hunter", "hunter terrier",
            "animal cat"]
    children = make.parse_is_a(is_a)
    names = {"dog": "dog", "hunter": "hunting animal", "pug": "pug", "terrier": "terrier",
             "cat": "cat"}
    wnids = ["cat", "pug", "terrier"]
    tasks = make.derive(children, names, wnids, {"dogs": ("dog", ""), "hunt": ("hunter", "")})
    assert tasks["dogs"]["class_ids"] == [1, 2] and tasks["hunt"]["class_ids"] == [2]
    assert tasks["dogs"]["class_names"] == ["pug", "terrier"]
    with pytest.raises(ValueError, match="root synset fish is not in the hierarchy"):
        make.derive(children, names, wnids, {"fish": ("fish", "")})
