"""edgeinfer's GGUF tokenizer rebuild against llama.cpp's reference vocabularies: for each
models/ggml-vocab-NAME.gguf with its .inp/.out (texts and the ids the model's own Hugging Face tokenizer gives them),
how many of the cases the rebuilt tokenizer reproduces.

    python bench/gguf_vocab_cases.py [MODELS_DIR]    (default: the llama.cpp source bench/setup_peers.sh unpacks)
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
from tokenizers import Tokenizer

from edgeinfer.errors import SourceError
from edgeinfer.export.gguf_tokenizer import tokenizer_from_gguf

PEERS = Path(__file__).parent / ".peers" / "llama.cpp"


def main(models: Path) -> None:
    for vocab in sorted(models.glob("ggml-vocab-*.gguf")):
        if not vocab.with_name(vocab.name + ".out").is_file():
            continue
        try:
            tokenizer = Tokenizer.from_str(tokenizer_from_gguf(gguf.GGUFReader(vocab)).tokenizer_json)
        except SourceError as error:
            print(f"{vocab.name}: refused ({error})")
            continue
        texts = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
        expected = vocab.with_name(vocab.name + ".out").read_text().split("\n")
        same = sum(tokenizer.encode(text, add_special_tokens=False).ids == [int(i) for i in ids.split()]
                   for text, ids in zip(texts, expected))
        print(f"{vocab.name}: {same}/{len(texts)} cases give the model's own ids")


if __name__ == "__main__":
    default = next(PEERS.glob("llama_cpp_python-*/vendor/llama.cpp/models"), None)
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
