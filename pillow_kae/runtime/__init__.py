"""The inference runtime: the shipped transforms as ONNX graphs run by ONNX Runtime or, when
installed, OpenVINO.

Training stays on Keras 3; coding an image needs neither Keras nor TensorFlow.
"""

from pillow_kae.runtime.session import summary

__all__ = ["summary"]
