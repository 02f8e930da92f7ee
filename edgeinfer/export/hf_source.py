"""Hugging Face checkpoints: a local folder (config.json + safetensors, sharded or not) or a hub id."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..hf_config import spec_from_hf_config
from ..errors import SourceError
from .safetensors_reader import SafetensorsFile
from .sources import TokenizerFiles, read_json


# Every file an export reads from a checkpoint folder (besides *.safetensors).
READ_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


class HFFolderSource:
    """A checkpoint folder. Its files are read only where they resolve inside ROOT (the folder itself, or a
    hub repo's cache folder whose snapshots link into ../../blobs): a stranger's checkpoint whose
    chat_template.jinja links to ~/.ssh/id_rsa would otherwise copy the key into the package's manifest.
    follow_symlinks=True reads links wherever they lead."""

    random_weights = False

    def __init__(self, folder: Path, root: Path | None = None, follow_symlinks: bool = False):
        self.folder = folder
        self._root = (root or folder).resolve()
        self._follow_symlinks = follow_symlinks
        if self._file("config.json") is None:
            raise SourceError(f"{folder} has no config.json: pass the folder of a Hugging Face checkpoint")
        for name in READ_FILES:  # refuse a link out of the folder now, not after minutes of export
            self._file(name)
        self.config = read_json(folder / "config.json")
        self.spec = spec_from_hf_config(self.config)
        self.description = f"hf:{folder.resolve()}"
        files = [f for f in (self._file(p.name) for p in sorted(folder.glob("*.safetensors"))) if f]
        if not files:
            raise SourceError(
                f"{folder} has no .safetensors files: edgeinfer reads safetensors only (convert .bin with transformers' save_pretrained)"
            )
        self._where: dict[str, SafetensorsFile] = {}
        for path in files:
            shard = SafetensorsFile(path)
            self._where.update(dict.fromkeys(shard.names(), shard))
        self._prefix = _language_model_prefix(self._where)
        stored = dict.fromkeys(self._stored_name(self.spec.checkpoint_tensor(n)[0]) for n in self.spec.tensor_names())
        missing = [n for n in stored if n not in self._where]
        if self.spec.tie_word_embeddings is False and missing == [self._stored_name("lm_head.weight")]:
            missing = []  # some checkpoints tie without saying so; tensor() falls back to the embedding
        if missing:
            raise SourceError(
                f"{folder} lacks {len(missing)} tensors the {self.spec.family} layout needs (first: {missing[0]}): "
                "the checkpoint is incomplete"
            )

    def _file(self, name: str) -> Path | None:
        """FOLDER/NAME if it is a file that may be read, None if there is none; a link out of ROOT is refused."""
        path = self.folder / name
        if not path.is_file():
            return None
        if not self._follow_symlinks and not path.resolve().is_relative_to(self._root):
            raise SourceError(
                f"{path} is a link to {path.resolve()}, outside the checkpoint folder {self._root}: "
                "copy the real file into the folder, or pass --follow-symlinks if you trust where it points"
            )
        return path

    def stored_bits(self, name: str) -> int | None:
        return None  # float checkpoint

    def exact_blocks(self, name: str) -> None:
        return None  # float checkpoint

    def _stored_name(self, name: str) -> str:
        """NAME as this checkpoint stores it: a multimodal one keeps its language model under a prefix."""
        if name == "lm_head.weight" and self._prefix == "language_model.model.":
            return "language_model.lm_head.weight"
        return self._prefix + name.removeprefix("model.") if name.startswith("model.") else name

    def tensor(self, name: str) -> np.ndarray:
        if name == "lm_head.weight" and self._stored_name(name) not in self._where:
            name = "model.embed_tokens.weight"
        canonical, rows = self.spec.checkpoint_tensor(name)
        stored = self._stored_name(canonical)
        array = self._where[stored].tensor(stored)
        expected = self.spec.tensor_shape(canonical)
        if tuple(array.shape) != expected:
            raise SourceError(f"tensor {stored} has shape {tuple(array.shape)}, config.json implies {expected}")
        array = np.asarray(array if rows is None else array[rows], dtype=np.float32)
        if name.endswith("norm.weight") and self.spec.family_data.norm_offset:
            array = array + np.float32(self.spec.family_data.norm_offset)  # sources give gains (Gemma: 1 + w)
        return array

    def tokenizer(self) -> TokenizerFiles:
        path = self._file("tokenizer.json")
        if path is None:
            raise SourceError(f"{self.folder} has no tokenizer.json: save the fast tokenizer with the checkpoint")
        config_path = self._file("tokenizer_config.json")
        config = read_json(config_path) if config_path else {}
        template = config.get("chat_template")
        if template_path := self._file("chat_template.jinja"):
            template = template_path.read_text(encoding="utf-8")
        tokenizer_json = path.read_text(encoding="utf-8")
        vocab = _token_ids(tokenizer_json)
        special = {
            role: _token_text(config.get(f"{role}_token"))
            for role in ("bos", "eos", "pad")
            if _token_text(config.get(f"{role}_token"))
        }
        eos_ids = _eos_ids(self._file("generation_config.json"), self.config, vocab.get(special.get("eos", ""), None))
        bos = self.config.get("bos_token_id", vocab.get(special.get("bos", "")))
        return TokenizerFiles(
            tokenizer_json=tokenizer_json,
            chat_template=template,
            bos_token_id=bos,
            eos_token_ids=eos_ids,
            add_bos_token=bool(config.get("add_bos_token", False)),
            special_tokens=special,
        )


# Where checkpoints keep the language model's "model." tensors: text-only ones at the top, multimodal ones
# (Gemma 3 4B and up) under language_model.model. (as published) or model.language_model. (saved by transformers 5).
LANGUAGE_MODEL_PREFIXES = ("model.", "model.language_model.", "language_model.model.")


def _language_model_prefix(names) -> str:
    return next((p for p in LANGUAGE_MODEL_PREFIXES if f"{p}embed_tokens.weight" in names), "model.")


def _token_text(token) -> str | None:
    # tokenizer_config.json holds special tokens either as text or as {"content": text, ...}
    return token.get("content") if isinstance(token, dict) else token


def _token_ids(tokenizer_json: str) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json).get_vocab(with_added_tokens=True)


def _eos_ids(generation: Path | None, config: dict, eos_from_tokenizer: int | None) -> list[int]:
    ids: list[int] = []
    for source in (read_json(generation) if generation else {}, config):
        value = source.get("eos_token_id")
        ids += value if isinstance(value, list) else [value] if value is not None else []
    if eos_from_tokenizer is not None:
        ids.append(eos_from_tokenizer)
    return list(dict.fromkeys(ids))


def hub_repo_root(snapshot: Path) -> Path:
    """The hub cache folder (models--org--name) that a snapshot's links point into (../../blobs)."""
    return snapshot.parents[1] if snapshot.parent.name == "snapshots" else snapshot


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
