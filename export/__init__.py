"""PyTorch side of ophreg-rt: model definitions, checkpoint loading, ONNX export and parity proof.

Not installed with the runtime; run from the repository root as ``python -m export ...``.
"""
