"""Tiny random checkpoints of each family, built with transformers in the test (no downloads), and what
transformers computes from them: the reference every export of that family is held to.

Each config is small but keeps what makes its family special, sized so that the tests reach it: Gemma 3's window
(6) is shorter than the prompt (20 tokens), Llama 3's original context (16) lies below the positions generated, Phi's
longrope switches to its long factors (at 40) during the greedy run, SmolLM3's fourth layer has no RoPE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conftest import write_chatml_tokenizer

BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            vocab_size=272, max_position_embeddings=512)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0}
PHI_PAIRS = 24  # head_dim 64 x partial_rotary_factor 0.75 = 48 rotary dims

# name -> (transformers config class, model class, config values)
CHECKPOINTS = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(BASE, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(BASE, head_dim=32, tie_word_embeddings=True,
                                                      rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    # Gemma 3's own layout: 5 sliding layers per global one, q wider than hidden (1B: 4 x 256 against 1152), the
    # q.k scale from query_pre_attn_scalar (which GGUF files do not carry: llama.cpp takes head_dim, as here).
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        BASE, num_hidden_layers=6, head_dim=32, query_pre_attn_scalar=32, sliding_window=6,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}})),
    # Gemma 3 4B and up: a multimodal checkpoint whose language model is exported (its text_config lists only what
    # differs from transformers' defaults, as the published ones do).
    "gemma3-multimodal": ("Gemma3Config", "Gemma3ForConditionalGeneration", dict(
        text_config=dict(BASE, head_dim=16, query_pre_attn_scalar=16, sliding_window=6,
                         layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14), mm_tokens_per_image=4)),
    "gemma3-scalar": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        BASE, head_dim=16, query_pre_attn_scalar=24, sliding_window=6, layer_types=["sliding_attention", "full_attention"])),
    "phi4-mini": ("Phi3Config", "Phi3ForCausalLM", dict(
        BASE, hidden_size=128, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=320,
        original_max_position_embeddings=40, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "short_factor": list(np.linspace(1.0, 1.5, PHI_PAIRS)),
                         "long_factor": list(np.linspace(1.0, 6.0, PHI_PAIRS)),
                         "original_max_position_embeddings": 40})),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(BASE, num_hidden_layers=4, tie_word_embeddings=True,
                                                            pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(BASE, sliding_window=5)),
    "ministral": ("MinistralConfig", "MinistralForCausalLM", dict(
        BASE, head_dim=16, sliding_window=5, layer_types=["sliding_attention", "full_attention"])),
}


def make_family_checkpoint(folder: Path, name: str, seed: int = 0) -> Path:
    """CHECKPOINTS[NAME] as a Hugging Face folder with random weights and a byte-level tokenizer."""
    import torch
    import transformers

    config_cls, model_cls, values = CHECKPOINTS[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**values)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(3.0)  # peakier, more informative logits than the default init
            else:  # norms away from their init, so that a misplaced or unshifted gain shows
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(folder)
    write_chatml_tokenizer(folder)
    return folder


class Reference:
    """transformers on one checkpoint: full-sequence logits and greedy decoding through its own cache."""

    def __init__(self, folder: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
        self._greedy: dict[tuple, list[int]] = {}

    def logits(self, ids: list[int]) -> np.ndarray:
        """[len(ids), vocab]: one forward pass over the whole sequence (no cache)."""
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].numpy()

    def greedy(self, prompt: list[int], count: int) -> tuple[list[int], list[np.ndarray]]:
        """COUNT greedy tokens after PROMPT, decoded one at a time through transformers' cache (as a runtime does),
        and the logits each was picked from. Where the cached path and a full forward pass part (longrope past its
        original context), this is the one a runtime must match."""
        import torch

        key = (tuple(prompt), count)
        if key not in self._greedy:
            tokens, rows = [], []
            with torch.no_grad():
                out = self.model(torch.tensor([prompt]), use_cache=True)
                for _ in range(count):
                    rows.append(out.logits[0, -1].numpy().copy())
                    tokens.append(int(rows[-1].argmax()))
                    out = self.model(torch.tensor([tokens[-1:]]), use_cache=True, **_cache_of(out))
            self._greedy[key] = tokens, rows
        return self._greedy[key]


def _cache_of(out) -> dict:
    """The cache to pass back: transformers 5.24 calls it `cache`, 5.17 (the GPU machine's) `past_key_values`."""
    try:
        return {"cache": out.cache}
    except AttributeError:
        return {"past_key_values": out.past_key_values}
