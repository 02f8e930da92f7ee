"""edgeinfer: an on-device LLM runtime: export to ONNX (W4A16), run on CPU, CUDA or QNN, and measure."""

__version__ = "0.1.0"

from .errors import EdgeInferError  # noqa: E402
from .model import GenerationResult, Model, load  # noqa: E402
from .sampler import GREEDY, SamplingParams  # noqa: E402
from .speculative import Speculation  # noqa: E402

__all__ = ["EdgeInferError", "GREEDY", "GenerationResult", "Model", "SamplingParams", "Speculation", "load"]
