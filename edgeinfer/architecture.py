"""The spec of one model: its family (families.py), sizes and the per-layer facts the graphs are built from.

The graph builders read only `ArchSpec`; weight sources produce tensors under the Hugging Face
names listed by `tensor_names`, whatever their own file format calls them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import SourceError
from .families import FAMILIES, Family
from .limits import MAX_SIZES, size_problem
from .rope import ROPE_TYPES


@dataclass(frozen=True)
class ArchSpec:
    """The shape and constants of one decoder-only model: what both graph builders and the runtime read."""

    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    # transformers' rope parameters beyond theta ({"rope_type": "llama3", "factor": 32.0, ...}, see rope.py);
    # None: plain RoPE
    rope_scaling: dict | None = None
    rotary_dim: int | None = None  # leading dims of each head that rotate (Phi-4-mini: 3/4); None: all of them
    layer_types: tuple[str, ...] = ()  # per layer FULL or SLIDING; (): all FULL
    sliding_window: int | None = None  # tokens a SLIDING layer sees, itself included
    local_rope_theta: float | None = None  # plain RoPE of SLIDING layers with a base of their own (Gemma 3)
    layers_without_rope: tuple[int, ...] = ()  # (SmolLM3's NoPE layers)
    attention_scale: float | None = None  # of q.k; None: 1/sqrt(head_dim) (Gemma: query_pre_attn_scalar^-0.5)

    @property
    def family_data(self) -> Family:
        return FAMILIES[self.family]

    @property
    def qkv_bias(self) -> bool:
        return self.family_data.qkv_bias

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def rotary_dims(self) -> int:
        return self.rotary_dim or self.head_dim

    @property
    def query_scale(self) -> float:
        return self.attention_scale if self.attention_scale is not None else self.head_dim ** -0.5

    @property
    def embedding_scale(self) -> float:
        """What the embeddings are multiplied by before the first layer (in float32, as transformers does)."""
        return float(np.float32(self.hidden_size ** 0.5)) if self.family_data.scaled_embeddings else 1.0

    # -- per layer ------------------------------------------------------------------------------------------
    def layer_window(self, layer: int) -> int | None:
        """The sliding window of LAYER; None: it attends to every earlier token."""
        sliding = self.layer_types and self.layer_types[layer] == SLIDING
        return self.sliding_window if sliding else None

    def ropes(self) -> list[tuple[float, dict | None]]:
        """The distinct (theta, scaling) RoPEs the layers use: the global one first, a sliding layers' own second."""
        kinds = [(self.rope_theta, self.rope_scaling)]
        if self.local_rope_theta is not None and any(self.layer_window(i) for i in range(self.num_layers)):
            kinds.append((self.local_rope_theta, None))
        return kinds

    def layer_rope(self, layer: int) -> int | None:
        """Index into ropes() of LAYER's RoPE; None for a layer without one."""
        if layer in self.layers_without_rope:
            return None
        return 1 if self.local_rope_theta is not None and self.layer_window(layer) else 0

    def windows(self) -> list[int | None]:
        """The distinct windows of the layers, in layer order (None: full attention): one attention mask each."""
        return list(dict.fromkeys(self.layer_window(i) for i in range(self.num_layers)))

    def layer_mask(self, layer: int) -> int:
        return self.windows().index(self.layer_window(layer))

    # -- tensors ----------------------------------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        """Hugging Face names of every weight, in the order the exporter consumes them (fused checkpoints' tensors
        by the names of their parts: see checkpoint_tensor)."""
        family = self.family_data
        names = ["model.embed_tokens.weight"]
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            names.append(p + f"{family.norms.attention_in}.weight")
            for proj in ("q_proj", "k_proj", "v_proj"):
                names.append(f"{p}self_attn.{proj}.weight")
                if self.qkv_bias:
                    names.append(f"{p}self_attn.{proj}.bias")
            if family.qk_norm:
                names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
            names.append(p + "self_attn.o_proj.weight")
            names += [f"{p}{norm}.weight" for norm in family.norms.names()[1:]]
            names += [f"{p}mlp.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")]
        names.append("model.norm.weight")
        if not self.tie_word_embeddings:
            names.append("lm_head.weight")
        return names

    def checkpoint_tensor(self, name: str) -> tuple[str, slice | None]:
        """Where a checkpoint keeps NAME: (its stored name, the rows of it that are NAME, or None for all). Fused
        families store q|k|v as qkv_proj and gate|up as gate_up_proj."""
        if not self.family_data.fused_checkpoint:
            return name, None
        q, kv, m = self.q_size, self.kv_size, self.intermediate_size
        parts = {"self_attn.q_proj.weight": ("self_attn.qkv_proj.weight", slice(0, q)),
                 "self_attn.k_proj.weight": ("self_attn.qkv_proj.weight", slice(q, q + kv)),
                 "self_attn.v_proj.weight": ("self_attn.qkv_proj.weight", slice(q + kv, q + 2 * kv)),
                 "mlp.gate_proj.weight": ("mlp.gate_up_proj.weight", slice(0, m)),
                 "mlp.up_proj.weight": ("mlp.gate_up_proj.weight", slice(m, 2 * m))}
        prefix, _, leaf = name.rpartition("model.layers.")[2].partition(".")
        if leaf in parts:
            stored, rows = parts[leaf]
            return f"model.layers.{prefix}.{stored}", rows
        return name, None

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        h, q, kv, m = self.hidden_size, self.q_size, self.kv_size, self.intermediate_size
        leaf = name.split(".")[-2]  # e.g. "q_proj" in model.layers.0.self_attn.q_proj.weight
        shapes = {
            "embed_tokens": (self.vocab_size, h),
            "lm_head": (self.vocab_size, h),
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "qkv_proj": (q + 2 * kv, h),
            "o_proj": (h, q),
            "gate_proj": (m, h),
            "up_proj": (m, h),
            "gate_up_proj": (2 * m, h),
            "down_proj": (h, m),
            "q_norm": (self.head_dim,),
            "k_norm": (self.head_dim,),
        }
        if name.endswith(".bias"):
            return (shapes[leaf][0],)
        if leaf in shapes:
            return shapes[leaf]
        if name.endswith("norm.weight"):
            return (h,)
        return shapes[leaf]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ArchSpec":
        names = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("layer_types", "layers_without_rope"):  # JSON gives lists
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


FULL, SLIDING = "full_attention", "sliding_attention"  # transformers' layer_types


def checked_spec(where: str, file_fields: dict[str, str], head_dim=None, **values) -> ArchSpec:
    """An ArchSpec from sizes read out of an untrusted file (WHERE), each checked before anything uses it:
    a crafted checkpoint claiming 10^12 layers or 0 heads is refused with one line, not a traceback or an
    allocation that never ends. FILE_FIELDS maps spec fields to the file's own key names for the message.
    HEAD_DIM None means hidden_size / num_heads."""

    def refuse(field: str, problem: str) -> SourceError:
        return SourceError(
            f"{where}: {file_fields[field]} {problem}: the file is damaged or not a real model; "
            "restore it from the original checkpoint"
        )

    sizes = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size")
    for field in sizes:
        problem = size_problem({field: values[field]})
        if problem:
            raise refuse(field, problem.removeprefix(field + " "))
    hidden, heads, kv_heads = values["hidden_size"], values["num_heads"], values["num_kv_heads"]
    if heads % kv_heads:
        raise refuse("num_kv_heads", f"is {kv_heads}, which does not divide the {heads} attention heads")
    if head_dim is None:
        if hidden % heads:
            raise refuse("num_heads", f"is {heads}, which does not divide hidden size {hidden}")
        head_dim = hidden // heads
    problem = size_problem({"head_dim": head_dim})
    if problem:
        raise refuse("head_dim", problem.removeprefix("head_dim "))
    positions = values["max_position_embeddings"]
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise refuse("max_position_embeddings", f"is {positions!r}, not a whole number >= 1")
    problem = constants_problem(values, head_dim)
    if problem:
        raise refuse(*problem)
    for field in ("rope_theta", "rms_norm_eps", "local_rope_theta", "attention_scale"):
        if values.get(field) is not None:
            values[field] = float(values[field])
    return ArchSpec(head_dim=head_dim, **values)


def spec_problem(spec: ArchSpec) -> str | None:
    """What is wrong with a spec read back from a package's manifest, in one line (None: nothing): the checks
    checked_spec makes of a checkpoint, for the fields beyond the sizes (limits.spec_sizes checks those)."""
    if not isinstance(spec.family, str) or spec.family not in FAMILIES:
        return f"family {spec.family!r} is not one of {', '.join(FAMILIES)}"
    problem = constants_problem(asdict(spec), spec.head_dim)
    return f"{problem[0]} {problem[1]}" if problem else None


def _positive(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < float("inf")


def _whole(value, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def constants_problem(values: dict, head_dim: int) -> tuple[str, str] | None:
    """(field, what is wrong) for the first of the spec's constants and optional per-layer facts (windows, NoPE
    layers, partial rotary, rope scaling) that no real model has; None when all are sound."""
    for field in ("rope_theta", "rms_norm_eps", "local_rope_theta", "attention_scale"):
        value = values.get(field)
        if not (value is None and field in ("local_rope_theta", "attention_scale")) and not _positive(value):
            return field, f"is {value!r}, not a positive number"
    layers = values["num_layers"]
    types = values.get("layer_types") or ()
    if not isinstance(types, (list, tuple)) or types and (len(types) != layers or not all(t in (FULL, SLIDING) for t in types)):
        return "layer_types", f"is not {layers} entries of {FULL!r} or {SLIDING!r}"
    window = values.get("sliding_window")
    if window is not None and not _whole(window, 1, MAX_SIZES["context_length"]):
        return "sliding_window", f"is {window!r}, not a whole number of tokens >= 1"
    nope = values.get("layers_without_rope") or ()
    if not isinstance(nope, (list, tuple)) or not all(_whole(i, 0, layers - 1) for i in nope):
        return "layers_without_rope", f"names layers outside 0..{layers - 1}"
    rotary = values.get("rotary_dim")
    if rotary is not None and not (_whole(rotary, 2, head_dim) and rotary % 2 == 0):
        return "rotary_dim", f"gives {rotary!r} rotary dims, not an even number up to head_dim {head_dim}"
    scaling = values.get("rope_scaling")
    problem = None if scaling is None else rope_scaling_problem(scaling, (rotary or head_dim) // 2)
    return ("rope_scaling", problem) if problem else None


def rope_scaling_problem(scaling, pairs: int) -> str | None:
    """What is wrong with a rope_scaling object for a head of PAIRS rotated pairs (None: nothing)."""
    if not isinstance(scaling, dict):
        return f"is {scaling!r}, not an object"
    kind = scaling.get("rope_type")
    if kind not in ROPE_TYPES:
        return f"has rope_type {kind!r}: edgeinfer builds {', '.join(ROPE_TYPES)}"
    needs = {"linear": ("factor",), "llama3": ("factor", "original_max_position_embeddings"),
             "yarn": ("original_max_position_embeddings",), "longrope": ("original_max_position_embeddings",)}
    for key in needs.get(kind, ()):
        if not _positive(scaling.get(key)):
            return f"has {key} {scaling.get(key)!r}, not a positive number"
    lists = {"longrope": ("short_factor", "long_factor"), "frequency_divisors": ("divisors",)}
    for key in lists.get(kind, ()):
        items = scaling.get(key)
        if not isinstance(items, list) or len(items) != pairs or not all(_positive(v) for v in items):
            return f"has {key} that is not {pairs} positive numbers (one per rotated pair)"
    return None
