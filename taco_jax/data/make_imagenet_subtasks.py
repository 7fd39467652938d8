r"""Derive the built-in ImageNet-1k subtasks from the WordNet hierarchy; writes
``taco_jax/data/imagenet_subtasks.json``.

A subtask is every ImageNet-1k class whose WordNet synset descends (is-a, transitively; WordNet
is a DAG, so any path counts) from a root synset, e.g. all 118 dog breeds under
``n02084071`` "dog, domestic dog". Class ids are tfds ``imagenet2012`` label ids (the order of
tfds's ``datasets/imagenet2012/labels.txt``, the usual sorted-wnid order).

Inputs, all public:
* ``wordnet.is_a.txt`` ("parent_wnid child_wnid" per line, 75,850 lines) and ``words.txt``
  ("wnid<TAB>names", 82,115 lines): ImageNet's WordNet 3.0 files, distributed by image-net.org
  as ``archive/wordnet.is_a.txt`` / ``archive/words.txt`` and redistributed, e.g., in the
  MadryLab BREEDS-Benchmarks repository as ``imagenet_class_hierarchy/wordnet/
  class_hierarchy.txt`` / ``node_names.txt``.
* ``labels.txt``: the 1,000 wnids in label order, installed with tensorflow-datasets.

Run (no network needed once the two WordNet files are on disk):

    python -m taco_jax.data.make_imagenet_subtasks --is_a=wordnet.is_a.txt --words=words.txt
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from absl import app, flags

from taco_jax.data import subtasks

# name -> (root synset, what it is). Roots are WordNet synsets; counts are checked in tests.
ROOTS: dict[str, tuple[str, str]] = {
    "dogs": ("n02084071", "dog, domestic dog (the 118 breeds, ids 151-268)"),
    "birds": ("n01503061", "bird"),
    "vehicles": ("n04524313", "vehicle (wheeled vehicles, craft, sleds, ...)"),
    "wheeled_vehicles": ("n04576211", "wheeled vehicle"),
    "fungi": ("n12992868", "fungus"),
    "food": ("n00021265", "food, nutrient (dishes, vegetables, fruit, drinks, ...)"),
    "dishes": ("n07557434", "dish"),
    "vegetables": ("n07707451", "vegetable"),
    "fruit": ("n13134947", "fruit (botanical: includes acorn, buckeye, hip, ...)"),
    "insects": ("n02159955", "insect"),
    "reptiles": ("n01661091", "reptile"),
    "felines": ("n02120997", "feline (domestic and big cats)"),
    "monkeys": ("n02484322", "monkey"),
    "musical_instruments": ("n03800933", "musical instrument"),
}

OUT = Path(__file__).with_name("imagenet_subtasks.json")


def parse_is_a(lines: Iterable[str]) -> dict[str, set[str]]:
    """children[parent] from "parent child" lines."""
    children: dict[str, set[str]] = collections.defaultdict(set)
    for line in lines:
        if line.strip():
            parent, child = line.split()
            children[parent].add(child)
    return children


def descendants(children: Mapping[str, set[str]], root: str) -> set[str]:
    """``root`` and every synset below it."""
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(children.get(node, ()))
    return seen


def derive(children: Mapping[str, set[str]], names: Mapping[str, str], wnids: Sequence[str],
           roots: Mapping[str, tuple[str, str]] = ROOTS) -> dict:
    """The subtasks: name -> root, description, class ids (sorted), wnids and class names."""
    tasks = {}
    for name, (root, what) in roots.items():
        if root not in children:
            raise ValueError(f"subtask {name!r}: root synset {root} is not in the hierarchy")
        below = descendants(children, root)
        ids = [i for i, w in enumerate(wnids) if w in below]
        if not ids:
            raise ValueError(f"subtask {name!r}: no ImageNet class descends from {root}")
        tasks[name] = {"root": root, "root_name": names.get(root, ""), "description": what,
                       "class_ids": ids, "wnids": [wnids[i] for i in ids],
                       "class_names": [names.get(wnids[i], "") for i in ids]}
    return tasks


def _define_flags() -> None:
    """Flags only when run as a script (tests import this module next to other launchers)."""
    flags.DEFINE_string("is_a", None, "ImageNet's wordnet.is_a.txt (parent child per line).")
    flags.DEFINE_string("words", None, "ImageNet's words.txt (wnid<TAB>names per line).")
    flags.DEFINE_string("out", str(OUT), "Where to write the JSON.")
    flags.mark_flags_as_required(["is_a", "words"])


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    children = parse_is_a(Path(f.is_a).read_text().splitlines())
    names = dict(line.split("\t", 1) for line in Path(f.words).read_text().splitlines()
                 if line.strip())
    tasks = derive(children, names, subtasks.imagenet_wnids())
    doc = {"source": "WordNet 3.0 is-a hierarchy of ImageNet (wordnet.is_a.txt, words.txt); "
                     "class ids are tfds imagenet2012 label ids",
           "made_by": "python -m taco_jax.data.make_imagenet_subtasks", "tasks": tasks}
    Path(f.out).write_text(json.dumps(doc, indent=1) + "\n")
    for name, t in tasks.items():
        print(f"{name:20s} {len(t['class_ids']):4d} classes  ({t['root']} {t['root_name']})")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
