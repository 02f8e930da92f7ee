"""An orthogonal rotation of the residual stream, folded into the weights (QuaRot / SpinQuant's R1).

Qwen2's residual stream carries a few "massive activation" channels: |x| of 1,000-6,000 on the first token from
layer 1 on, against a median of ~0.2. A uint16 range per tensor must span them, so every ordinary token sits on
a coarse grid, and the weight rows that meet those channels are the outliers that int4 per-channel scales choke
on. With x' = x Q for an orthogonal Q (a Hadamard matrix when one of that size is known), a spike of size m in one
channel becomes ~m / sqrt(H) in every channel, and the model computes the same function:

    RMSNorm(x Q) = RMSNorm(x) Q            (the norm of a row does not change; the gains are folded below)
    q/k/v, gate/up  W' = W diag(g) Q       (g: the preceding RMSNorm's gain, now 1)
    o, down         W' = Q^T W             (their outputs join the rotated stream)
    embeddings      E' = E Q ;  lm_head  W' = W diag(g_final) Q

Attention, the KV cache and the MLP's inner activations are untouched. The float graph of the rotated weights
equals the original up to float rounding (tests/test_rotation.py), so the rotation costs no accuracy and no
run time: it only changes what the quantizer sees.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from ..architecture import ArchSpec
from ..hadamard import rotation
from .sources import TokenizerFiles, WeightSource

LAYER_TENSOR = re.compile(r"^(model\.layers\.\d+\.)(.+)$")


class RotatedResidual:
    """WEIGHTS with the residual stream rotated (see the module's docstring); the spec unties lm_head from the
    embeddings, since the two now differ by the final norm's gain."""

    def __init__(self, weights: WeightSource):
        self.source = weights
        self.spec: ArchSpec = replace(weights.spec, tie_word_embeddings=False)
        self.description = weights.description
        self.random_weights = weights.random_weights
        # float32 products: the rounding (~1e-7 relative) is far below int4's, and float64 took twice as long
        self.q = rotation(weights.spec.hidden_size).astype(np.float32)

    def _gain(self, name: str) -> np.ndarray:
        return self.source.tensor(name).astype(np.float32)

    def tensor(self, name: str) -> np.ndarray:
        q, tied = self.q, self.source.spec.tie_word_embeddings
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            return np.ones(self.spec.hidden_size, dtype=np.float32)
        if name == "model.embed_tokens.weight":
            return self._rotate_rows(self.source.tensor(name), q)
        if name == "lm_head.weight":
            head = self.source.tensor("model.embed_tokens.weight" if tied else name)
            return self._rotate_rows(head, self._gain("model.norm.weight")[:, None] * q)
        match = LAYER_TENSOR.match(name)
        layer, leaf = match.groups() if match else ("", name)
        if leaf in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"):
            return self._rotate_rows(self.source.tensor(name), self._gain(layer + "input_layernorm.weight")[:, None] * q)
        if leaf in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            return self._rotate_rows(self.source.tensor(name), self._gain(layer + "post_attention_layernorm.weight")[:, None] * q)
        if leaf in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):  # [H, in]: rotate the output side
            return q.T @ self.source.tensor(name).astype(np.float32)
        return self.source.tensor(name)  # biases of q/k/v: outputs, not the stream

    @staticmethod
    def _rotate_rows(weight: np.ndarray, m: np.ndarray, rows: int = 16384) -> np.ndarray:
        """WEIGHT [out, H] @ M [H, H], in slices of rows (the 151,936-row vocabulary would need 1.9 GB at once)."""
        out = np.empty(weight.shape, dtype=np.float32)
        for start in range(0, weight.shape[0], rows):
            out[start : start + rows] = weight[start : start + rows].astype(np.float32) @ m
        return out

    def stored_bits(self, name: str) -> int | None:
        return self.source.stored_bits(name)

    def exact_blocks(self, name: str) -> None:
        return None  # rotated weights are new floats

    def tokenizer(self) -> TokenizerFiles:
        return self.source.tokenizer()
