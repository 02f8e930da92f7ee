"""Write a Hugging Face folder (float32 safetensors + tokenizer) dequantized from a GGUF, with transformers' GGUF loader:
what onnxruntime-genai's own builder reads, so its package and edgeinfer's start from the same weights.

    python bench/hf_from_gguf.py GGUF OUT_DIR
    python -m onnxruntime_genai.models.builder -i OUT_DIR -o GENAI_DIR -p int4 -e cpu -c CACHE
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(gguf: Path, out: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers 5 refuses save_pretrained on a GGUF-loaded model ("not serializable"); the tensors are plain float.
    out.mkdir(parents=True, exist_ok=True)
    model.config.quantization_config = None
    model.config.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)  # written as null, which genai's builder reads as a dict
    config["architectures"] = [type(model).__name__]  # a GGUF-loaded config names none; the builder picks by it
    (out / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors", metadata={"format": "pt"})
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
