"""TACO for the ViT family on the embedded task: ``vit_mini`` (4x4 patches, dim 96, depth 4),
the demo's task, data and budget, and the demo's shipped vit_mini generalist.

  python -m launch.taco --config=configs/taco/vit.py --workdir=runs/vit
  python -m launch.taco --config=configs/taco/vit.py:pattern=2:4 --workdir=runs/vit24

Variant keys: as ``demo.py``, whose fields and their resolution (``schedule="auto"``, the
"stem" override, ``generalist.steps=0``, ...) this config shares: it is the demo with
``model=vit_mini`` unless the variant names another model.
"""

import ml_collections

from taco_jax.configs.taco import demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if "model=" not in (arg or ""):
        arg = ",".join(filter(None, ["model=vit_mini", arg]))
    # The demo's ("stem", 0.0) override keeps the ViT's stem, its 4x4x1 patch embedding
    # (patch_embed.proj, 16 inputs per output), dense, like the ResNet stem in the demo.
    # Attention and MLP linears follow the global allocation.
    return demo.get_config(arg)
