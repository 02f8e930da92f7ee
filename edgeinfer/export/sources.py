"""Weight sources: everything the exporter can read, behind one small interface.

A source yields float32 tensors under Hugging Face names and layout ([out, in] for linear weights),
one at a time, so the exporter never holds more than one layer's weights in memory. Whatever the checkpoint
stores, a source gives every RMSNorm weight as the gain the normalized vector is multiplied by (Gemma's
checkpoints store gain - 1; GGUF files the gain) and fused tensors (Phi-3's qkv_proj) as their parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..architecture import ArchSpec
from ..errors import SourceError

if TYPE_CHECKING:
    from .gguf_blocks import ExactBlocks


@dataclass
class TokenizerFiles:
    """What a package needs to tokenize and chat: file texts plus the ids generation stops on."""

    tokenizer_json: str
    chat_template: str | None
    bos_token_id: int | None
    eos_token_ids: list[int]
    add_bos_token: bool = False
    special_tokens: dict[str, str] = field(default_factory=dict)  # role (bos/eos/pad) -> token text

    def tokenizer_config(self) -> dict:
        # The package ships tokenizer.json alone: transformers' class for that is PreTrainedTokenizerFast, and
        # onnxruntime-genai's tokenizer applies the chat template only when some tokenizer_class is named.
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.add_bos_token,
                  "chat_template": self.chat_template}
        config.update({f"{role}_token": text for role, text in self.special_tokens.items()})
        return config


class WeightSource(Protocol):
    spec: ArchSpec
    description: str  # for the manifest: what was exported
    random_weights: bool

    def tensor(self, name: str) -> np.ndarray:
        """The float32 tensor under its Hugging Face name."""

    def stored_bits(self, name: str) -> int | None:
        """Bits per weight the checkpoint stored NAME with, when it says (GGUF: Q4_K -> 4, Q6_K -> 6); None for
        float checkpoints. A 4-bit export keeps 8 bits where a quantized checkpoint kept more than 4."""

    def exact_blocks(self, name: str) -> "ExactBlocks | None":
        """NAME in the checkpoint's own integer blocks when they map exactly onto MatMulNBits (GGUF's Q4_K, Q6_K...,
        see gguf_blocks.py); None for float checkpoints and for formats without such a mapping."""

    def tokenizer(self) -> TokenizerFiles:
        """Tokenizer and chat template files for the package."""


class FiniteWeights:
    """A source whose tensors are checked on the way to the exporter: NaN or inf in a checkpoint would
    otherwise become a package that quietly generates noise (4-bit quantization turns them into -inf or
    zero logits, which the sampler cannot tell from real ones)."""

    def __init__(self, source: WeightSource):
        self.source = source
        self.spec, self.description, self.random_weights = source.spec, source.description, source.random_weights

    def tensor(self, name: str) -> np.ndarray:
        array = self.source.tensor(name)
        # min and max carry NaN and inf through without a temporary as large as the tensor.
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise SourceError(
                f"{self.description}: tensor {name} holds NaN or inf values: the checkpoint is damaged, "
                "restore or re-download it"
            )
        return array

    def stored_bits(self, name: str) -> int | None:
        return self.source.stored_bits(name)

    def exact_blocks(self, name: str) -> "ExactBlocks | None":
        blocks = self.source.exact_blocks(name)
        if blocks is not None and not blocks.finite():
            raise SourceError(
                f"{self.description}: tensor {name} holds NaN or inf scales: the checkpoint is damaged, "
                "restore or re-download it"
            )
        return blocks

    def tokenizer(self) -> TokenizerFiles:
        return self.source.tokenizer()


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}: restore the file from the original checkpoint") from None
