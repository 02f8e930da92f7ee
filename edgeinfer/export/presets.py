"""Architecture presets: random weights of a known shape, for benchmarks and tests where no weights are at hand.

Random weights give the same graph, the same file size and the same speed as the real model; the text they
produce is noise, and every package built from a preset says so in its manifest.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..architecture import FULL, SLIDING, ArchSpec
from ..errors import SourceError
from .byte_level import bytes_to_unicode
from .sources import TokenizerFiles

DEFAULT_PRESET = "deepseek-r1-distill-qwen-1.5b"


@dataclass(frozen=True)
class Preset:
    spec: ArchSpec
    tokenizer: str  # "deepseek" (the real DeepSeek-R1-Distill-Qwen tokenizer) or "bytes" (tiny, for tests)


def _tiny(family: str, **overrides) -> ArchSpec:
    values = dict(
        family=family, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=272, rope_theta=10000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    )
    return ArchSpec(**{**values, **overrides})


def _gemma3_layers(count: int) -> tuple[str, ...]:
    return tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(count))


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
# Phi-4-mini's longrope with placeholder factors (all 1.0: the shape and the speed are the real model's, the
# frequencies are not; a real checkpoint brings its own).
PHI4_ROPE = {"rope_type": "longrope", "original_max_position_embeddings": 4096,
             "short_factor": [1.0] * 48, "long_factor": [1.0] * 48}


def _real(family: str, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
          vocab: int, theta: float, eps: float, positions: int, tied: bool, **rest) -> ArchSpec:
    return ArchSpec(family=family, hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                    head_dim=head_dim, intermediate_size=intermediate, vocab_size=vocab, rope_theta=theta,
                    rms_norm_eps=eps, max_position_embeddings=positions, tie_word_embeddings=tied, **rest)


PRESETS: dict[str, Preset] = {
    DEFAULT_PRESET: Preset(
        ArchSpec(
            family="qwen2", hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
            intermediate_size=8960, vocab_size=151936, rope_theta=10000.0, rms_norm_eps=1e-6,
            max_position_embeddings=131072,
        ),
        tokenizer="deepseek",
    ),
    # The families' real small shapes (config.json of each checkpoint), with a byte tokenizer: speed, not text.
    "llama-3.2-1b": Preset(_real("llama", 2048, 16, 32, 8, 64, 8192, 128256, 500000.0, 1e-5, 131072, True,
                                 rope_scaling=LLAMA3_ROPE), tokenizer="bytes"),
    "llama-3.2-3b": Preset(_real("llama", 3072, 28, 24, 8, 128, 8192, 128256, 500000.0, 1e-5, 131072, True,
                                 rope_scaling=LLAMA3_ROPE), tokenizer="bytes"),
    "qwen3-0.6b": Preset(_real("qwen3", 1024, 28, 16, 8, 128, 3072, 151936, 1e6, 1e-6, 40960, True), tokenizer="bytes"),
    "qwen3-1.7b": Preset(_real("qwen3", 2048, 28, 16, 8, 128, 6144, 151936, 1e6, 1e-6, 40960, True), tokenizer="bytes"),
    "gemma-3-1b": Preset(_real("gemma3", 1152, 26, 4, 1, 256, 6912, 262144, 1e6, 1e-6, 32768, True,
                               layer_types=_gemma3_layers(26), sliding_window=512, local_rope_theta=10000.0,
                               attention_scale=256 ** -0.5), tokenizer="bytes"),
    "phi-4-mini": Preset(_real("phi3", 3072, 32, 24, 8, 128, 8192, 200064, 10000.0, 1e-5, 131072, True,
                               rotary_dim=96, rope_scaling=PHI4_ROPE), tokenizer="bytes"),
    "smollm2-1.7b": Preset(_real("llama", 2048, 24, 32, 32, 64, 8192, 49152, 130000.0, 1e-5, 8192, True), tokenizer="bytes"),
    "smollm3-3b": Preset(_real("smollm3", 2048, 36, 16, 4, 128, 11008, 128256, 5e6, 1e-6, 65536, True,
                               layers_without_rope=tuple(range(3, 36, 4))), tokenizer="bytes"),
    "mistral-7b-v0.1": Preset(_real("mistral", 4096, 32, 32, 8, 128, 14336, 32000, 10000.0, 1e-5, 32768, False,
                                    layer_types=(SLIDING,) * 32, sliding_window=4096), tokenizer="bytes"),
    # Two layers of each family, with what sets it apart, for tests and `edgeinfer run preset:tiny-...`.
    "tiny-qwen2": Preset(_tiny("qwen2"), tokenizer="bytes"),
    "tiny-llama": Preset(_tiny("llama"), tokenizer="bytes"),
    "tiny-llama3": Preset(_tiny("llama", tie_word_embeddings=True,
                                rope_scaling={**LLAMA3_ROPE, "original_max_position_embeddings": 64}), tokenizer="bytes"),
    "tiny-qwen3": Preset(_tiny("qwen3", head_dim=32, tie_word_embeddings=True), tokenizer="bytes"),
    "tiny-gemma3": Preset(_tiny("gemma3", num_layers=6, head_dim=32, tie_word_embeddings=True,
                                layer_types=_gemma3_layers(6), sliding_window=8, local_rope_theta=10000.0,
                                attention_scale=32 ** -0.5), tokenizer="bytes"),
    "tiny-phi3": Preset(_tiny("phi3", hidden_size=128, num_heads=2, num_kv_heads=1, head_dim=64, rotary_dim=48,
                              rope_scaling={**PHI4_ROPE, "original_max_position_embeddings": 64,
                                            "short_factor": [1.0] * 24, "long_factor": [4.0] * 24}), tokenizer="bytes"),
    "tiny-smollm3": Preset(_tiny("smollm3", num_layers=4, tie_word_embeddings=True, layers_without_rope=(3,)),
                           tokenizer="bytes"),
    "tiny-mistral": Preset(_tiny("mistral", layer_types=(SLIDING, FULL), sliding_window=8), tokenizer="bytes"),
}


class PresetSource:
    random_weights = True

    def __init__(self, name: str):
        if name not in PRESETS:
            raise SourceError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        self.name = name
        self.preset = PRESETS[name]
        self.spec = self.preset.spec
        self.description = f"preset:{name}"

    def stored_bits(self, name: str) -> int | None:
        return None  # random float weights

    def exact_blocks(self, name: str) -> None:
        return None  # random float weights

    def tensor(self, name: str) -> np.ndarray:
        shape = self.spec.tensor_shape(name)
        if name.endswith("norm.weight"):
            return np.ones(shape, dtype=np.float32)
        # Seeded by the tensor's name: the same preset always gives the same weights.
        rng = np.random.default_rng(zlib.crc32(f"{self.name}/{name}".encode()))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    def tokenizer(self) -> TokenizerFiles:
        config = _deepseek_config()
        if self.preset.tokenizer == "deepseek":
            tokenizer_json = gzip.decompress(_asset("tokenizer.json.gz").read_bytes()).decode("utf-8")
            vocab = json.loads(tokenizer_json)
            ids = {t["content"]: t["id"] for t in vocab["added_tokens"]}
        else:
            tokenizer_json, ids = byte_tokenizer_json(list(_special_texts(config)))
        specials = {role: config[f"{role}_token"] for role in ("bos", "eos") if config.get(f"{role}_token")}
        return TokenizerFiles(
            tokenizer_json=tokenizer_json,
            chat_template=config["chat_template"],
            bos_token_id=ids[specials["bos"]],
            eos_token_ids=[ids[specials["eos"]]],
            add_bos_token=bool(config.get("add_bos_token", True)),
            special_tokens=specials,
        )


def _asset(filename: str):
    return resources.files("edgeinfer.presets").joinpath(DEFAULT_PRESET, filename)


def _deepseek_config() -> dict:
    config = json.loads(_asset("tokenizer_config.json").read_text(encoding="utf-8"))
    config = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in config.items()}
    return config


def _special_texts(config: dict):
    yield config["bos_token"]
    yield config["eos_token"]
    yield from ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>")


def byte_tokenizer_json(special_tokens: list[str]) -> tuple[str, dict[str, int]]:
    """A byte-level BPE with no merges: 256 byte tokens plus the given specials. Tiny, complete, real."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import AddedToken

    table = bytes_to_unicode()
    byte_order = [table[b] for b in range(256)]  # token i is byte i
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(byte_order)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    ids = {t: tokenizer.token_to_id(t) for t in special_tokens}
    return tokenizer.to_str(), ids
