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

from ..architecture import ArchSpec
from ..errors import SourceError
from .byte_level import bytes_to_unicode
from .sources import TokenizerFiles

DEFAULT_PRESET = "deepseek-r1-distill-qwen-1.5b"


@dataclass(frozen=True)
class Preset:
    spec: ArchSpec
    tokenizer: str  # "deepseek" (the real DeepSeek-R1-Distill-Qwen tokenizer) or "bytes" (tiny, for tests)


def _tiny(family: str) -> ArchSpec:
    return ArchSpec(
        family=family, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=272, rope_theta=10000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    )


PRESETS: dict[str, Preset] = {
    DEFAULT_PRESET: Preset(
        ArchSpec(
            family="qwen2", hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
            intermediate_size=8960, vocab_size=151936, rope_theta=10000.0, rms_norm_eps=1e-6,
            max_position_embeddings=131072,
        ),
        tokenizer="deepseek",
    ),
    "tiny-qwen2": Preset(_tiny("qwen2"), tokenizer="bytes"),
    "tiny-llama": Preset(_tiny("llama"), tokenizer="bytes"),
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
