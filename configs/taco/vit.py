"""TACO for the ViT family on the embedded task: ``vit_mini`` (4x4 patches, dim 96, depth 4),
the demo's task, data and budget. Its generalist is not shipped: the first run trains it
(recipe below) and caches it.

  python -m launch.taco --config=configs/taco/vit.py --workdir=runs/vit
  python -m launch.taco --config=configs/taco/vit.py:pattern=2:4 --workdir=runs/vit24

Variant keys: as ``demo.py``.
"""

import ml_collections

from configs.taco import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = demo.get_config(arg)
    if "model=" not in (arg or ""):
        c.model = "vit_mini"
    # The 4x4x1 patch embedding (16 inputs per output) is the ViT's stem: kept dense, like the
    # ResNet stem in the demo. Attention and MLP linears follow the global allocation.
    c.prune.overrides = (("patch_embed.proj", 0.0),)
    c.generalist.steps = 3000  # ViTs need longer on 12k images (BUILD_NOTES, mini variants)
    return c
