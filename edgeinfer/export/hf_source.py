"""Hugging Face checkpoints: a local folder (config.json + safetensors, sharded or not) or a hub id."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..architecture import ArchSpec
from ..errors import SourceError
from .safetensors_reader import SafetensorsFile
from .sources import TokenizerFiles, read_json


class HFFolderSource:
    random_weights = False

    def __init__(self, folder: Path):
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise SourceError(f"{folder} has no config.json: pass the folder of a Hugging Face checkpoint")
        self.folder = folder
        self.config = read_json(config_path)
        self.spec = ArchSpec.from_hf_config(self.config)
        self.description = f"hf:{folder.resolve()}"
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise SourceError(
                f"{folder} has no .safetensors files: edgeinfer reads safetensors only (convert .bin with transformers' save_pretrained)"
            )
        self._where: dict[str, SafetensorsFile] = {}
        for path in files:
            shard = SafetensorsFile(path)
            self._where.update(dict.fromkeys(shard.names(), shard))
        missing = [n for n in self.spec.tensor_names() if n not in self._where]
        if self.spec.tie_word_embeddings is False and missing == ["lm_head.weight"]:
            missing = []  # some checkpoints tie without saying so; tensor() falls back to the embedding
        if missing:
            raise SourceError(
                f"{folder} lacks {len(missing)} tensors the {self.spec.family} layout needs (first: {missing[0]}): "
                "the checkpoint is incomplete"
            )

    def tensor(self, name: str) -> np.ndarray:
        if name not in self._where and name == "lm_head.weight":
            name = "model.embed_tokens.weight"
        array = self._where[name].tensor(name)
        expected = self.spec.tensor_shape(name)
        if tuple(array.shape) != expected:
            raise SourceError(f"tensor {name} has shape {tuple(array.shape)}, config.json implies {expected}")
        return np.asarray(array, dtype=np.float32)

    def tokenizer(self) -> TokenizerFiles:
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise SourceError(f"{self.folder} has no tokenizer.json: save the fast tokenizer with the checkpoint")
        config = read_json(self.folder / "tokenizer_config.json") if (self.folder / "tokenizer_config.json").is_file() else {}
        template = config.get("chat_template")
        if (self.folder / "chat_template.jinja").is_file():
            template = (self.folder / "chat_template.jinja").read_text(encoding="utf-8")
        tokenizer_json = path.read_text(encoding="utf-8")
        vocab = _token_ids(tokenizer_json)
        special = {
            role: _token_text(config.get(f"{role}_token"))
            for role in ("bos", "eos", "pad")
            if _token_text(config.get(f"{role}_token"))
        }
        eos_ids = _eos_ids(self.folder, self.config, vocab.get(special.get("eos", ""), None))
        bos = self.config.get("bos_token_id", vocab.get(special.get("bos", "")))
        return TokenizerFiles(
            tokenizer_json=tokenizer_json,
            chat_template=template,
            bos_token_id=bos,
            eos_token_ids=eos_ids,
            add_bos_token=bool(config.get("add_bos_token", False)),
            special_tokens=special,
        )


def _token_text(token) -> str | None:
    # tokenizer_config.json holds special tokens either as text or as {"content": text, ...}
    return token.get("content") if isinstance(token, dict) else token


def _token_ids(tokenizer_json: str) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json).get_vocab(with_added_tokens=True)


def _eos_ids(folder: Path, config: dict, eos_from_tokenizer: int | None) -> list[int]:
    ids: list[int] = []
    generation = folder / "generation_config.json"
    for source in (read_json(generation) if generation.is_file() else {}, config):
        value = source.get("eos_token_id")
        ids += value if isinstance(value, list) else [value] if value is not None else []
    if eos_from_tokenizer is not None:
        ids.append(eos_from_tokenizer)
    return list(dict.fromkeys(ids))


def download_from_hub(repo_id: str) -> Path:
    """Fetch the files an export needs; works offline when the hub cache already has them."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:  # the hub client raises many kinds: offline, 404, auth, disk
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(
            f"cannot download {repo_id} from the Hugging Face hub ({reason}): check the network and the repo id, "
            "or download it elsewhere and pass the local folder"
        ) from None
