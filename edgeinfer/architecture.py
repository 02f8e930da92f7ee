"""Architecture facts in one declarative place: families, the spec of one model, and presets.

The graph builders read only `ArchSpec`; weight sources produce tensors under the Hugging Face
names listed by `tensor_names`, whatever their own file format calls them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import SourceError
from .limits import size_problem


@dataclass(frozen=True)
class Family:
    """What differs between decoder families that share the Llama layout."""

    name: str
    hf_architectures: tuple[str, ...]
    hf_model_types: tuple[str, ...]
    qkv_bias: bool


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2", ("Qwen2ForCausalLM",), ("qwen2",), qkv_bias=True),
        Family("llama", ("LlamaForCausalLM", "MistralForCausalLM"), ("llama", "mistral"), qkv_bias=False),
    )
}


@dataclass(frozen=True)
class ArchSpec:
    """The shape and constants of one decoder-only model."""

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

    @property
    def qkv_bias(self) -> bool:
        return FAMILIES[self.family].qkv_bias

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def tensor_names(self) -> list[str]:
        """Hugging Face names of every weight, in the order the exporter consumes them."""
        names = ["model.embed_tokens.weight"]
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            names.append(p + "input_layernorm.weight")
            for proj in ("q_proj", "k_proj", "v_proj"):
                names.append(f"{p}self_attn.{proj}.weight")
                if self.qkv_bias:
                    names.append(f"{p}self_attn.{proj}.bias")
            names += [p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight"]
            names += [f"{p}mlp.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")]
        names.append("model.norm.weight")
        if not self.tie_word_embeddings:
            names.append("lm_head.weight")
        return names

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        h, q, kv, m = self.hidden_size, self.q_size, self.kv_size, self.intermediate_size
        leaf = name.split(".")[-2]  # e.g. "q_proj" in model.layers.0.self_attn.q_proj.weight
        shapes = {
            "embed_tokens": (self.vocab_size, h),
            "lm_head": (self.vocab_size, h),
            "q_proj": (q, h),
            "k_proj": (kv, h),
            "v_proj": (kv, h),
            "o_proj": (h, q),
            "gate_proj": (m, h),
            "up_proj": (m, h),
            "down_proj": (h, m),
        }
        if name.endswith("norm.weight"):
            return (h,)
        if name.endswith(".bias"):
            return (shapes[leaf][0],)
        return shapes[leaf]

    @classmethod
    def from_hf_config(cls, config: dict) -> "ArchSpec":
        """Read a transformers config.json; refuse architectures we cannot build."""
        archs = tuple(config.get("architectures") or ())
        model_type = config.get("model_type", "")
        family = next(
            (f for f in FAMILIES.values() if model_type in f.hf_model_types or set(archs) & set(f.hf_architectures)),
            None,
        )
        if family is None:
            known = ", ".join(a for f in FAMILIES.values() for a in f.hf_architectures)
            raise SourceError(
                f"unsupported architecture {archs or model_type!r}: edgeinfer exports decoder LLMs of the "
                f"Qwen2/Llama family ({known})"
            )
        rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise SourceError(f"rope scaling {rope!r} is not supported yet: export a checkpoint with plain RoPE")
        missing = [key for key in _HF_REQUIRED if key not in config]
        if missing:
            raise SourceError(f"config.json has no {missing[0]}: restore config.json from the original checkpoint")
        heads = config["num_attention_heads"]
        return checked_spec(
            "config.json",
            _HF_FIELDS,
            family=family.name,
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or None,  # some configs write null or 0: derive it
            intermediate_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            rope_theta=config.get("rope_theta", rope.get("rope_theta", 10000.0)),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ArchSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# ArchSpec field -> the config.json key it comes from, so that errors name what the user sees in the file.
_HF_FIELDS = {
    "hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
    "rope_theta": "rope_theta", "rms_norm_eps": "rms_norm_eps",
}


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
    for field in ("rope_theta", "rms_norm_eps"):
        value = values[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise refuse(field, f"is {value!r}, not a positive number")
        values[field] = float(value)
    return ArchSpec(head_dim=head_dim, **values)
