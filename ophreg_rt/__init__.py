"""ophreg_rt: registration of ophthalmic images with ONNX graphs of SuperPoint and SuperGlue.

Torch-free: it needs only numpy, opencv and onnxruntime.
"""

__version__ = "0.1.0"
