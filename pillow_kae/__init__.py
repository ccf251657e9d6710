"""pillow-kae: a learned lossy image codec inside Pillow.

``import pillow_kae`` registers the KAE format (``.kae``) with Pillow, and so with imageio's
Pillow plugin. Opening a file reads only its header; the inference runtime (ONNX Runtime,
never TensorFlow) is loaded on the first ``load()`` or ``save()``.
"""

from __future__ import annotations

import logging

from pillow_kae import KaeImagePlugin
from pillow_kae.analysis import features, surprise

__version__ = "0.1.0"
__all__ = ["KaeImagePlugin", "__version__", "features", "surprise"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def _register_with_imageio() -> None:
    """Tell imageio that '.kae' belongs to its Pillow plugin (it only knows listed suffixes)."""
    try:
        from imageio.config.extensions import FileExtension, extension_list, known_extensions
    except ImportError:  # imageio is optional at run time
        return
    if any(ext.name == "KAE" for ext in known_extensions.get(".kae", [])):
        return
    entry = FileExtension(
        name="KAE", extension=".kae", priority=["pillow"], description="pillow-kae learned image"
    )
    extension_list.append(entry)
    known_extensions.setdefault(".kae", []).append(entry)


_register_with_imageio()
