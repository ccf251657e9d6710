"""The inference runtime: the shipped transforms as ONNX graphs run by ONNX Runtime.

Training stays on Keras 3; coding an image needs neither Keras nor TensorFlow.
"""
