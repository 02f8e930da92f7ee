"""Export options: what a package is built for, in one dataclass that the manifest records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..errors import ExportError
from ..limits import MAX_SIZES

PRECISIONS = ("w4a16", "fp16", "fp32")
TARGETS = ("cpu", "cuda", "qnn", "openvino")
STATIC_TARGETS = ("qnn", "openvino")  # static-shape graphs (static_graph.py): NPUs compile each shape once
# openvino: 32, the GGUF Q4_K sub-block, which float zero points then keep exactly (quantize.quantize_blocks_float_zero)
DEFAULT_BLOCKS = {"cpu": 128, "cuda": 128, "qnn": 16, "openvino": 32}
ATTENTIONS = ("gqa", "grouped")
EIGHT_BIT_RULES = ("q4km", "attention-down")  # see weight_bits.py
# cpu: "gqa" until bench/decode_depth.py's run on real weights (decode at depths 128 and 4064, prefill) says whether
# "grouped" wins at every depth; cuda: onnxruntime's GroupQueryAttention runs flash attention on an fp16 cache.
DEFAULT_ATTENTION = {"cpu": "gqa", "cuda": "gqa"}
DEFAULT_CONTEXT = 4096  # when the model allows it; a KV cache this long fits a phone's memory for 1-3B models


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "w4a16"
    target: str = "cpu"
    context_length: int | None = None  # None: min(DEFAULT_CONTEXT, the model's positions), see for_model
    block_size: int | None = None  # 4-bit block along the input dimension; None: the target's (see for_model)
    symmetric: bool = False  # asymmetric 4-bit (with zero points): closer to the weights than symmetric
    mixed_bits: bool = True  # 8-bit attn_v and ffn_down where Q4_K_M keeps 6 bits (see weight_bits.py; qnn too)
    # which matmuls of a float source keep 8 bits when mixed_bits (weight_bits.py): "q4km", v and down_proj in llama.cpp
    # Q4_K_M's layers; "attention-down", q|k|v, o and down_proj in every layer (only gate|up at 4 bits), with lm_head at
    # 4 bits unless lm_head_bits says otherwise. None: attention-down on cpu, q4km elsewhere (cuda's 8-bit MatMulNBits
    # speed is unmeasured; the static targets' 8-bit weights are another kernel).
    # attention-down on the real 1.5B's float path (bench/results/float-path-qwen2.5-coder-1.5b.md): per weight, q/k/o
    # are the most sensitive (~2.5x down_proj, ~3.5x gate|up), and an 8-bit lm_head is as good as float but 4 bits
    # cost little, so lm_head's 117 MB go to attention and down within the same bytes.
    eight_bit_rule: str | None = None
    accuracy_level: int = 4  # MatMulNBits compute type on CPU: 4 = int8 dot products (fastest on AVX2)
    all_logits: bool = False  # prefill returns logits for every position, not just the last
    quantize_embeddings: bool = True  # w4a16 only: 4-bit embedding table (GatherBlockQuantized)
    # w4a16 cpu from a quantized GGUF: False keeps the file's own blocks where they map exactly onto MatMulNBits
    # (Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K, export/gguf_blocks.py; the rest is requantized); True dequantizes everything
    # and quantizes it again to block_size (the path before lossless import)
    requantize: bool = False
    # w4a16 only: 8, 4, or 0 to keep it float; None: 4 from a float source under the attention-down rule (untied), else
    # 8 (weight_bits.head_bits)
    lm_head_bits: int | None = None
    prefill_chunk: int = 128  # static graphs (qnn): tokens per prefill run
    rotate: bool = True  # qnn w4a16: rotate the residual stream (export/rotation.py); off only to measure it
    # qnn w4a16: prefill and decode quantize each activation on one grid, so speculation's verify runs (the prefill
    # graph) pick exactly what decode steps pick. Off by default: on real Qwen2.5 weights the first token's massive
    # activations widen prefill's residual ranges (about +-200 against +-10 in decode), which one grid would hand to
    # decode; not yet measured on real weights. Without it a qnn w4a16 package does not speculate.
    shared_role_ranges: bool = False
    center_keys: bool = True  # qnn: keys minus their bias's mean (static_graph.key_center); off only to measure it
    gptq: bool = True  # w4a16: round int4 weights by GPTQ on the calibration text (gptq.py, weighted_blocks.py)
    # cpu/cuda w4a16: 4-bit scales and zero points searched for the inputs each matmul sees on real text, rounded by
    # GPTQ when `gptq` (weighted_blocks.py); off: onnxruntime's round-to-nearest. Sources of random weights skip it.
    # Off by default: on the real 1.5B (float path, 1,275 scored tokens) it moved nothing beyond noise (same top
    # 92.00% vs 91.76%, PPL +2.65% vs +2.85%, mean KLD 0.0372 vs 0.0373) for 3.1x the export time and 3.5x its
    # memory (bench/results/awq-qwen2.5-coder-1.5b.md).
    activation_aware: bool = False
    # w4a16 cpu/cuda: the 4-bit embedding table's block (a gather reads it: its block size costs no speed); None: the
    # matmuls' block_size. 32 cut layer 0's q|k output error from the table alone from 2.8e-3 to 1.2e-3 of the output
    # (with the activation-aware search), for 24 MB more; not the default until measured end to end
    # (bench/results/awq-qwen2.5-coder-1.5b.md: layer-0 gains did not carry to the whole model for the matmuls).
    embedding_block_size: int | None = None
    # qnn: smaller contexts with graphs of their own over the same weights, so a short chat attends over fewer
    # slots; None: every power of two from 512 below the context (see for_model)
    context_buckets: tuple[int, ...] | None = None
    # cpu/cuda: "gqa" (onnxruntime's GroupQueryAttention over a [1, kvh, context, D] cache) or "grouped" (cpu only:
    # grouped_attention.py over a row-major cache prefix); None: the target's default (see for_model)
    attention: str | None = None
    # cpu gqa: decode's attention runs with a padding row (dynamic_graph.spare_cache_rows), so that greedy speculation
    # gives plain decoding's tokens bit for bit. It costs decode about 2% at 128 cached tokens and 11-16% at 4064 (a
    # GEMM instead of a GEMV over the cache; bench/results/decode-depth-cpu-xeon-2c-padding-row.md). None: on where
    # every matmul is batch invariant too (dynamic_graph.batch_invariant_matmuls: a GGUF's own blocks, or blocks of
    # 16/32), the only packages where it buys exactness; off elsewhere.
    exact_speculation: bool | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ExportError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise ExportError(f"unknown target {self.target!r}: choose one of {', '.join(TARGETS)}")
        if self.block_size not in (None, 16, 32, 64, 128, 256):
            raise ExportError(f"block size {self.block_size} is not supported: use 16, 32, 64, 128 or 256")
        if self.embedding_block_size not in (None, 16, 32, 64, 128, 256):
            raise ExportError(f"embedding block size {self.embedding_block_size} is not supported: use 16, 32, 64, 128 or 256")
        if self.eight_bit_rule not in (None, *EIGHT_BIT_RULES):
            raise ExportError(f"unknown 8-bit rule {self.eight_bit_rule!r}: choose one of {', '.join(EIGHT_BIT_RULES)}")
        if self.lm_head_bits not in (None, 0, 4, 8):
            raise ExportError(f"lm_head bits {self.lm_head_bits} is not supported: use 4, 8, or 0 for float")
        if self.attention not in (None, *ATTENTIONS):
            raise ExportError(f"unknown attention {self.attention!r}: choose one of {', '.join(ATTENTIONS)}")
        if self.attention == "grouped" and self.target != "cpu":
            raise ExportError(f"--attention grouped is for --target cpu (a {self.target} package uses gqa): drop it")
        if self.exact_speculation and not (self.target == "cpu" and self.attention in (None, "gqa")):
            raise ExportError("exact speculation pads GroupQueryAttention on the cpu: drop it for "
                              f"--target {self.target}" + (" --attention grouped" if self.attention == "grouped" else ""))
        if self.context_buckets is not None:
            object.__setattr__(self, "context_buckets", tuple(sorted(set(self.context_buckets))))  # JSON gives lists
        if self.context_length is None:
            return
        if self.context_length < 16:
            raise ExportError(f"context length {self.context_length} is too small: use at least 16")
        if self.context_length > MAX_SIZES["context_length"]:
            raise ExportError(
                f"context length {self.context_length} is above the {MAX_SIZES['context_length']} edgeinfer supports: "
                "pass a smaller --context"
            )
        if self.target in STATIC_TARGETS and self.context_length % self.prefill_chunk:
            raise ExportError(
                f"context {self.context_length} is not a multiple of the prefill chunk {self.prefill_chunk}: change one"
            )
        for bucket in self.context_buckets or ():
            if not (self.prefill_chunk <= bucket < self.context_length and bucket % self.prefill_chunk == 0):
                raise ExportError(
                    f"context bucket {bucket} must be a multiple of the prefill chunk {self.prefill_chunk} below the "
                    f"context {self.context_length}: change or drop it"
                )

    def for_model(self, max_positions: int) -> "ExportOptions":
        """These options with every default resolved for a model of MAX_POSITIONS. Context: an explicit one must
        fit the model; the default is DEFAULT_CONTEXT or the model's own limit, whichever is smaller. Block size:
        128 for MatMulNBits on cpu/cuda (its fastest kernels), 16 for qnn's LPBQ int4 (on real weights, per-layer
        SQNR 17.2 / 18.0 / 18.8 dB for blocks of 64 / 32 / 16: on the HTP a block costs 4 bits of scale, and
        accuracy is what W4A16 there lacks)."""
        if self.block_size is None:
            return replace(self, block_size=DEFAULT_BLOCKS[self.target]).for_model(max_positions)
        if self.eight_bit_rule is None:
            rule = "attention-down" if self.target == "cpu" else "q4km"  # cuda's 8-bit MatMulNBits is unmeasured
            return replace(self, eight_bit_rule=rule).for_model(max_positions)
        if self.attention is None and self.graph_flavour == "dynamic":
            return replace(self, attention=DEFAULT_ATTENTION[self.target]).for_model(max_positions)
        if self.context_length is None:
            context = min(DEFAULT_CONTEXT, max_positions)
            if self.target in STATIC_TARGETS:
                context -= context % self.prefill_chunk  # static graphs run whole prefill chunks
            return replace(self, context_length=context).for_model(max_positions)
        if self.context_buckets is None:
            buckets = ()
            # openvino: one context, two compiled graphs (each OpenVINO blob carries its own copy of the weights)
            if self.target == "qnn":
                powers = (2**k for k in range(9, 20))  # 512, 1024, ...
                buckets = tuple(c for c in powers if self.prefill_chunk <= c < self.context_length and c % self.prefill_chunk == 0)
            return replace(self, context_buckets=buckets).for_model(max_positions)
        if self.context_length > max_positions:
            raise ExportError(
                f"context {self.context_length} exceeds the model's {max_positions} positions: "
                f"pass --context {max_positions} or less, or leave it out to use the model's limit"
            )
        return self

    @property
    def activation_dtype(self) -> str:
        """Activations are fp16 on GPUs, fp32 on CPUs (their 4-bit kernels compute in fp32/int8 there)."""
        return "float16" if self.target == "cuda" else "float32"

    @property
    def graph_flavour(self) -> str:
        return "static" if self.target in STATIC_TARGETS else "dynamic"

    def to_dict(self) -> dict:
        """As the manifest records them (JSON: tuples are lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
