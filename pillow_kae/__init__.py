"""pillow-kae: a learned lossy image codec inside Pillow.

``import pillow_kae`` registers the KAE format (``.kae``) with Pillow, and so with imageio's
Pillow plugin. Opening a file reads only its header; TensorFlow is imported on the first
``load()`` or ``save()``.
"""

from __future__ import annotations

import logging

from pillow_kae import KaeImagePlugin

__version__ = "0.1.0"
__all__ = ["KaeImagePlugin", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
