"""A transformers config.json read into an ArchSpec, in the config formats checkpoints ship today.

Two generations of keys meet here: checkpoints written before transformers 5 keep `rope_theta` and `rope_scaling`
(and Gemma 3 `rope_local_base_freq`) at the top level; transformers 5 writes `rope_parameters`, per layer type for
Gemma 3 ({"full_attention": {...}, "sliding_attention": {...}}). Which layers slide comes from `layer_types`, or
where a config has none, from the family's pattern (Gemma 3: every 6th layer global) or `sliding_window` alone
(Mistral, Phi-3: every layer). A multimodal checkpoint (Gemma 3 4B and up) is read for its language model alone:
its text_config, over transformers' defaults for the keys it leaves out (Family.hf_defaults).
"""

from __future__ import annotations

from .architecture import FULL, SLIDING, ArchSpec, checked_spec
from .errors import SourceError
from .families import Family, family_for, nearest_family, supported_families

_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# ArchSpec field -> the config.json key it comes from, so that errors name what the user sees in the file.
HF_FIELDS = {
    "hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
    "rope_theta": "rope_theta", "rms_norm_eps": "rms_norm_eps", "rope_scaling": "rope_scaling",
    "rotary_dim": "partial_rotary_factor", "layer_types": "layer_types", "sliding_window": "sliding_window",
    "local_rope_theta": "rope_local_base_freq", "layers_without_rope": "no_rope_layers",
    "attention_scale": "query_pre_attn_scalar",
}


def spec_from_hf_config(config: dict) -> ArchSpec:
    archs = tuple(config.get("architectures") or ())
    model_type = config.get("model_type", "")
    family = family_for(model_type, archs)
    if family is None:
        named = model_type or (archs[0] if archs else "")
        raise SourceError(
            f"unsupported architecture {archs or model_type!r}: edgeinfer exports the decoder families "
            f"{supported_families()}; the nearest is {nearest_family(named)}, which this checkpoint is not"
        )
    config = _text_config(config, family)
    _refuse_what_the_graphs_lack(config, family)
    missing = [key for key in _HF_REQUIRED if key not in config]
    if missing:
        raise SourceError(f"config.json has no {missing[0]}: restore config.json from the original checkpoint")
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or None  # some configs write null or 0: derive it
    global_rope, local_rope = _rope_parameters(config)
    scaling = {k: v for k, v in global_rope.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
    if scaling.get("rope_type", "default") == "default":
        scaling = None
    partial = global_rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    rotary_dim = _rotary_dim(config, heads, head_dim, partial)
    scalar = config.get("query_pre_attn_scalar")  # Gemma: q.k scaled by its -1/2 power, not head_dim's
    return checked_spec(
        "config.json",
        HF_FIELDS,
        family=family.name,
        hidden_size=config["hidden_size"],
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        rope_theta=global_rope.get("rope_theta", 10000.0),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", family.tied_by_default)),
        rope_scaling=scaling,
        rotary_dim=rotary_dim,
        **_layer_attention(config, family, layers, local_rope),
        attention_scale=scalar ** -0.5 if isinstance(scalar, (int, float)) and scalar > 0 else scalar,
    )


def _text_config(config: dict, family: Family) -> dict:
    """The language model's config with the family's defaults under it: a multimodal checkpoint's text_config (Gemma 3
    4B and up; its vision tower is not exported) or the config itself."""
    text = config.get("text_config")
    if isinstance(text, dict):
        keep = {k: config[k] for k in ("tie_word_embeddings",) if k in config}
        config = {**text, **keep, "architectures": config.get("architectures"), "model_type": text.get("model_type")}
    return {**family.hf_defaults, **config}


def _refuse_what_the_graphs_lack(config: dict, family: Family) -> None:
    """Config switches the family's graphs do not build: exported anyway, they would give another model."""
    switches = {"final_logit_softcapping": None, "attn_logit_softcapping": None, "use_bidirectional_attention": False,
                "mlp_bias": False}
    if not family.qkv_bias:
        switches["attention_bias"] = False
    for key, plain in switches.items():
        if config.get(key, plain) not in (plain, None, False):
            raise SourceError(
                f"config.json sets {key} = {config[key]!r}, which edgeinfer's {family.name} graphs do not build: "
                "this checkpoint cannot be exported yet"
            )


def _rope_parameters(config: dict) -> tuple[dict, dict | None]:
    """(the global rope's parameters with its theta, the sliding layers' own or None), from either generation."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise SourceError(f"config.json: rope_scaling is {params!r}, not an object: restore config.json from the original checkpoint")
    local = None
    if "full_attention" in params or "sliding_attention" in params:  # transformers 5, per layer type
        local = params.get("sliding_attention")
        params = params.get("full_attention") or {}
    params = dict(params)
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if "rope_type" not in params:
        params["rope_type"] = params.get("type", "default")
    if params["rope_type"] in ("su", "yarn") and "short_factor" in params:
        params["rope_type"] = "longrope"  # Phi-3's older names for it
    if params["rope_type"] in ("llama3", "yarn", "longrope") and "original_max_position_embeddings" not in params:
        params["original_max_position_embeddings"] = config.get("original_max_position_embeddings")
    if local is None and "rope_local_base_freq" in config:
        local = {"rope_theta": config["rope_local_base_freq"]}
    return params, local


def _rotary_dim(config: dict, heads: int, head_dim: int | None, partial) -> int | None:
    if partial == 1.0:
        return None
    if not isinstance(partial, (int, float)) or isinstance(partial, bool) or not 0 < partial <= 1:
        raise SourceError(f"config.json: partial_rotary_factor is {partial!r}, not a number in (0, 1]: "
                          "restore config.json from the original checkpoint")
    width = head_dim or (config["hidden_size"] // heads if isinstance(heads, int) and heads > 0 else 0)
    return int(width * partial)


def _layer_attention(config: dict, family: Family, layers: int, local_rope: dict | None) -> dict:
    """layer_types, sliding_window, local_rope_theta and layers_without_rope, from whichever keys the config has."""
    window = config.get("sliding_window")
    if config.get("use_sliding_window") is False:  # Qwen and SmolLM3 keep a window they do not use
        window = None
    types = config.get("layer_types")
    if types is None and window is not None and isinstance(layers, int):
        if family.sliding_pattern:
            pattern = config.get("sliding_window_pattern") or family.sliding_pattern
            types = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers)]
        elif "max_window_layers" in config:  # Qwen: the layers from max_window_layers on slide
            types = [SLIDING if i >= config["max_window_layers"] else FULL for i in range(layers)]
        else:
            types = [SLIDING] * layers
    if window is None:
        types = None
    no_rope = config.get("no_rope_layers")  # SmolLM3: 1 where a layer uses RoPE
    return {
        "layer_types": tuple(types) if isinstance(types, list) else types or (),
        "sliding_window": window,
        "local_rope_theta": (local_rope or {}).get("rope_theta") if window is not None else None,
        "layers_without_rope": tuple(i for i, uses in enumerate(no_rope) if not uses) if isinstance(no_rope, list) else (),
    }
