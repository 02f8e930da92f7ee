"""Shared fixtures: tiny random checkpoints (built in seconds with transformers) and packages exported from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.backends import get_backend
from edgeinfer.export.exporter import export
from edgeinfer.export.options import ExportOptions
from edgeinfer.export.presets import byte_tokenizer_json

TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    vocab_size=272, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False,
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


CUDA = get_backend("cuda").availability()
needs_gpu = pytest.mark.skipif(not CUDA.ok, reason=f"CUDA is absent here: {CUDA}")


def make_hf_checkpoint(folder: Path, family: str = "qwen2", seed: int = 0, **overrides) -> Path:
    """A tiny random transformers model saved as a Hugging Face folder, with a byte-level tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if family == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    model = model_cls(config_cls(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # larger weights than the default init give peakier, more informative logits
        for p in model.parameters():
            p.mul_(3.0) if p.dim() == 2 else None
    model.save_pretrained(folder)
    write_chatml_tokenizer(folder)
    return folder


def write_chatml_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer with ChatML's special tokens and template beside a tiny checkpoint."""
    tokenizer_json, _ = byte_tokenizer_json(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf") / "llama", "llama")


def export_tiny(source, out: Path, **options) -> Path:
    export(str(source), out, ExportOptions(**{"context_length": 256, **options}), force=True, progress=False)
    return out


STATIC_CHUNK = 16  # prefill chunk of the static_packages


@pytest.fixture(scope="session")
def static_packages(tmp_path_factory) -> dict[str, Path]:
    """The tiny preset as qnn packages, W4A16 and fp32 (prefill chunk STATIC_CHUNK), shared by the static tests."""
    root = tmp_path_factory.mktemp("static")
    return {
        "w4a16": export_tiny("preset:tiny-qwen2", root / "w4a16", target="qnn", prefill_chunk=STATIC_CHUNK),
        "fp32": export_tiny("preset:tiny-qwen2", root / "fp32", target="qnn", precision="fp32", prefill_chunk=STATIC_CHUNK),
    }


@pytest.fixture(scope="session")
def qwen2_fp32(qwen2_dir, tmp_path_factory) -> Path:
    return export_tiny(qwen2_dir, tmp_path_factory.mktemp("pkg") / "qwen2-fp32", precision="fp32")


@pytest.fixture(scope="session")
def qwen2_w4(qwen2_dir, tmp_path_factory) -> Path:
    return export_tiny(qwen2_dir, tmp_path_factory.mktemp("pkg") / "qwen2-w4", precision="w4a16")


@pytest.fixture(scope="session")
def preset_pkg(tmp_path_factory) -> Path:
    """The tiny DeepSeek-style preset (byte tokenizer, DeepSeek chat template), W4A16."""
    return export_tiny("preset:tiny-qwen2", tmp_path_factory.mktemp("pkg") / "tiny-preset")


def reference_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def decode_and_verify_rows(model, ids: list[int], last: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits after each of IDS' LAST tokens, fed one decode step at a time and as one verify run (rows, steps)."""
    from edgeinfer.sampler import GREEDY

    steps, one = [], model.generator(GREEDY)
    one.append(ids[:-last])
    for token in ids[-last:]:
        one.append([token])
        steps.append(one.logits.copy())
    rows = model.generator(GREEDY)
    rows.append(ids[:-last])
    rows.verify(ids[-last:], rows=last)
    return rows.row_logits(), np.array(steps)
