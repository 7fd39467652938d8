"""PyTorch checkpoints (timm / torchvision / Hugging Face) → Flax NNX models and orbax
checkpoints. ``.safetensors`` needs no torch; ``.pth``/``.bin`` need torch."""

from taco_jax.convert.checkpoint import field_meta, load_checkpoint, read_meta, save_checkpoint
from taco_jax.convert.convert import ModelSpec, convert_state_dict
from taco_jax.convert.load import CheckpointMismatchError, load_state_dict_into, torch_layout
from taco_jax.convert.pos_embed import resize_pos_embed
from taco_jax.convert.safetensors_io import read_safetensors
from taco_jax.convert.state_dict import load_state_dict

__all__ = ["CheckpointMismatchError", "ModelSpec", "convert_state_dict", "field_meta",
           "load_checkpoint", "load_state_dict", "load_state_dict_into", "read_meta",
           "read_safetensors", "resize_pos_embed", "save_checkpoint", "torch_layout"]
