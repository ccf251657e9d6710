"""Neural-network layers shared by the models (Keras 3, backend-agnostic)."""

from pillow_kae.layers.gdn import GDN
from pillow_kae.layers.subpixel import SubpixelConv2D, depth_to_space

__all__ = ["GDN", "SubpixelConv2D", "depth_to_space"]
