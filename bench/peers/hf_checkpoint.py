"""Write a random-weight Hugging Face checkpoint of the target shape, with a real Qwen2 tokenizer.

Run from the repository root by a peer's own Python (it needs torch, transformers and the gguf package):
    python -m bench.peers.hf_checkpoint OUT_DIR VOCAB_GGUF
The tokenizer comes from llama.cpp's ggml-vocab-qwen2.gguf, since no model hub is reachable here.
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from bench.peers import TARGET_SHAPE


def main(out_dir: Path, vocab_gguf: Path) -> None:
    torch.manual_seed(0)
    config = Qwen2Config(**TARGET_SHAPE, torch_dtype="bfloat16")
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(vocab_gguf.parent, gguf_file=vocab_gguf.name)
    tokenizer.save_pretrained(out_dir)
    print(json.dumps({"hf_dir": str(out_dir), "parameters": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
