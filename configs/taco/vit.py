"""TACO for the ViT family on the embedded task: ``vit_mini`` (4x4 patches, dim 96, depth 4),
the demo's task, data and budget, and the demo's shipped vit_mini generalist.

  python -m launch.taco --config=configs/taco/vit.py --workdir=runs/vit
  python -m launch.taco --config=configs/taco/vit.py:pattern=2:4 --workdir=runs/vit24

Variant keys: as ``demo.py``.
"""

import ml_collections

from configs.taco import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if "model=" not in (arg or ""):
        arg = ",".join(filter(None, ["model=vit_mini", arg]))
    c = demo.get_config(arg)
    # The 4x4x1 patch embedding (16 inputs per output) is the ViT's stem: kept dense, like the
    # ResNet stem in the demo. Attention and MLP linears follow the global allocation.
    c.prune.overrides = (("patch_embed.proj", 0.0),)
    return c
