"""onnxruntime-genai's view of a dynamic package: genai_config.json, written from the manifest.

An app that embeds onnxruntime-genai (its C, C#, Java, Objective-C or Python API) opens the package folder as a model
folder: the config names genai's decoder graph (genai_graph.py: the package's graph behind genai's inputs, the same
weights file). The fields follow what genai's own model builder writes (onnxruntime_genai/models/builders/base.py,
make_genai_config).
"""

from __future__ import annotations

from ..graph_contract import ATTENTION_MASK, GENAI_DECODER, INPUT_IDS, LOGITS
from ..package import Manifest

# genai's model types (src/models/model_type.h) for edgeinfer's families; every one runs genai's plain decoder.
GENAI_MODEL_TYPES = {"gemma3": "gemma3_text"}
# The CUDA decode step is built to be captured (fixed shapes, the cache shared in place, a context-wide mask), as
# edgeinfer's own runner does; genai then keeps a [1, max_length] mask and updates it in place.
CUDA_PROVIDER_OPTIONS = {"enable_cuda_graph": "1"}


def genai_config(manifest: Manifest) -> dict:
    """genai_config.json of a dynamic (cpu, cuda) package."""
    spec, tokenizer = manifest.spec, manifest.tokenizer
    eos = tokenizer["eos_token_ids"]
    providers = [{"cuda": dict(CUDA_PROVIDER_OPTIONS)}] if manifest.target == "cuda" else []
    return {
        "model": {
            "type": GENAI_MODEL_TYPES.get(spec.family, spec.family),
            "bos_token_id": tokenizer["bos_token_id"] if tokenizer["bos_token_id"] is not None else eos[0],
            "eos_token_id": eos,
            "pad_token_id": eos[0],
            "vocab_size": spec.vocab_size,
            "context_length": manifest.context_length,
            "decoder": {
                "filename": GENAI_DECODER,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": providers},
                "hidden_size": spec.hidden_size,
                "head_size": spec.head_dim,
                "num_attention_heads": spec.num_heads,
                "num_key_value_heads": spec.num_kv_heads,
                "num_hidden_layers": spec.num_layers,
                "inputs": {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": LOGITS, "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
            },
        },
        "search": {
            # genai's cache is max_length rows: leave the package's spare rows free for decode's padding row
            # (dynamic_graph.spare_cache_rows), which lands one row past the last token
            "max_length": manifest.context_length - manifest.kv_cache.get("spare_rows", 0),
            # GroupQueryAttention appends to the cache in place: past and present are one context-long buffer.
            "past_present_share_buffer": True,
            "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "min_length": 0, "early_stopping": True,
            "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0, "diversity_penalty": 0.0,
        },
    }
