"""monocon-edge: MonoCon embeddings from training to a static, quantized ONNX artifact."""

__version__ = "0.1.0"
