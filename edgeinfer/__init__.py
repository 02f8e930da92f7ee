"""edgeinfer: an on-device LLM runtime: export to ONNX (W4A16), run on CPU, CUDA or QNN, and measure."""

__version__ = "0.1.0"
