"""Untrusted checkpoints and careless -o paths: export refuses them with one line and touches nothing.

Each vector here broke before: --force deleted whatever OUT held (the source included), links in a checkpoint
folder copied files from outside it into the package, and crafted sizes in config.json or a GGUF header gave
tracebacks or grew memory until the kernel killed the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.hf_config import spec_from_hf_config
from edgeinfer.cli import main
from edgeinfer.errors import ExportError, SourceError
from edgeinfer.export.exporter import export
from edgeinfer.export.options import ExportOptions
from edgeinfer.export.open_source import open_source

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- do-not-leak"


def tree_hash(folder: Path) -> dict[str, str]:
    """Every file and link under FOLDER (hidden ones too) -> sha256 of its bytes or its link target."""
    state = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            state[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[rel] = "dir"
    return state


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; it must fail with exit code 2 and one line on stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("edgeinfer: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def checkpoint(qwen2_dir, tmp_path) -> Path:
    """A copy of the tiny checkpoint inside a project folder under tmp_path (so the tests may hash and change it)."""
    folder = tmp_path / "project" / "model"
    shutil.copytree(qwen2_dir, folder)
    return folder


# --- 1. --force replaces only packages, never the source --------------------------------------------------


def _home_like(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    (home / "notes.txt").write_text("mine")
    return home


@pytest.mark.parametrize("case", ["source itself", "project holding the source", "inside the source",
                                  "link to the source", "home folder", "folder with a broken manifest"])
def test_force_refuses_folders_that_are_not_packages_or_touch_the_source(checkpoint, tmp_path, capsys, monkeypatch, case):
    home = _home_like(tmp_path)
    (tmp_path / "link").symlink_to(checkpoint)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"name": "my own manifest"}')
    out = {"source itself": checkpoint, "project holding the source": Path("."),
           "inside the source": checkpoint / "onnx", "link to the source": tmp_path / "link",
           "home folder": home, "folder with a broken manifest": broken}[case]
    monkeypatch.chdir(checkpoint.parent)  # `-o .` is the project folder
    before = tree_hash(tmp_path)
    err = cli_error(capsys, "export", str(checkpoint), "-o", str(out), "--force", "--context", "64")
    assert tree_hash(tmp_path) == before
    assert "-o" in err or "--force" in err


def test_force_refuses_the_folder_holding_a_gguf_source(checkpoint, tmp_path, capsys):
    from .gguf_fixtures import write_gguf_from_hf

    gguf = write_gguf_from_hf(checkpoint, checkpoint.parent / "model.gguf")
    before = tree_hash(tmp_path)
    for out in (gguf.parent, tmp_path):  # the folder holding the file, and one above it
        err = cli_error(capsys, "export", str(gguf), "-o", str(out), "--force", "--context", "64")
        assert "source" in err
    assert tree_hash(tmp_path) == before


def test_an_output_that_is_a_symlink_is_refused(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "out").symlink_to(empty)
    before = tree_hash(tmp_path)
    err = cli_error(capsys, "export", str(checkpoint), "-o", str(tmp_path / "out"), "--context", "64")
    assert "symbolic link" in err and tree_hash(tmp_path) == before


def test_refusal_comes_before_the_source_is_read(tmp_path, monkeypatch):
    from edgeinfer.export import sources

    monkeypatch.setattr(sources.FiniteWeights, "__init__", lambda *a: pytest.fail("weights opened"))
    home = _home_like(tmp_path)
    with pytest.raises(ExportError, match="not an edgeinfer package"):
        export("preset:tiny-qwen2", home, ExportOptions(context_length=64), force=True, progress=False)


def test_force_replaces_a_package_or_an_empty_folder(tmp_path):
    out = tmp_path / "pkg"
    out.mkdir()  # empty: no --force needed
    export("preset:tiny-qwen2", out, ExportOptions(context_length=64), progress=False)
    export("preset:tiny-qwen2", out, ExportOptions(context_length=128), force=True, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["context_length"] == 128
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["files"], "manifest.json"])  # no marker left
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_a_users_folders_named_like_staging_folders_survive_the_sweep(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is surely gone
    mine = [tmp_path / f".tiny.tmp-{dead.pid}-photos", tmp_path / f".tiny.old-{dead.pid}"]
    for folder in mine:
        folder.mkdir()
        (folder / "holiday.jpg").write_bytes(b"\xff\xd8 not a package")
    before = tree_hash(tmp_path)
    export("preset:tiny-qwen2", tmp_path / "tiny", ExportOptions(context_length=64), progress=False)
    assert {k: v for k, v in tree_hash(tmp_path).items() if not k.startswith("tiny")} == before


def test_cli_refusal_is_one_line_without_traceback(checkpoint):
    proc = subprocess.run([sys.executable, "-m", "edgeinfer.cli", "export", str(checkpoint), "-o", str(checkpoint),
                           "--force"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("edgeinfer: error: ") and "is the source" in proc.stderr


# --- 2. links out of a checkpoint folder --------------------------------------------------------------------


def _secret_file(tmp_path: Path, name: str, text: str) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / name).write_text(text)
    return secrets / name


def test_a_chat_template_linked_to_a_private_key_is_refused(checkpoint, tmp_path, capsys):
    (checkpoint / "chat_template.jinja").symlink_to(_secret_file(tmp_path, "id_rsa", SECRET))
    err = cli_error(capsys, "export", str(checkpoint), "-o", str(tmp_path / "out"), "--context", "64")
    assert "chat_template.jinja" in err and "--follow-symlinks" in err
    assert not (tmp_path / "out").exists()
    # The user's explicit flag reads it: the rule guards against surprises, not against the user.
    main(["export", str(checkpoint), "-o", str(tmp_path / "out"), "--context", "64", "--follow-symlinks"])
    assert SECRET in (tmp_path / "out" / "manifest.json").read_text(encoding="utf-8")


def test_a_tokenizer_config_linked_to_credentials_is_refused(checkpoint, tmp_path):
    credentials = {"aws_secret_access_key": "do-not-leak", "chat_template": "{{ 'do-not-leak' }}"}
    (checkpoint / "tokenizer_config.json").unlink()
    (checkpoint / "tokenizer_config.json").symlink_to(_secret_file(tmp_path, "credentials", json.dumps(credentials)))
    with pytest.raises(SourceError, match="tokenizer_config.json is a link to .* outside the checkpoint folder"):
        export(str(checkpoint), tmp_path / "out", ExportOptions(context_length=64), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"])
def test_any_file_linked_out_of_the_folder_is_refused(checkpoint, tmp_path, name):
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir()
    if (checkpoint / name).exists():
        shutil.move(checkpoint / name, target)
    else:
        target.write_text('{"eos_token_id": 0}')
    (checkpoint / name).symlink_to(target)
    with pytest.raises(SourceError, match=f"{name} is a link") as caught:
        open_source(str(checkpoint))
    assert "\n" not in str(caught.value)
    open_source(str(checkpoint), follow_symlinks=True)


def test_links_inside_the_folder_and_a_linked_folder_are_fine(checkpoint, tmp_path):
    (checkpoint / "weights").mkdir()
    shutil.move(checkpoint / "model.safetensors", checkpoint / "weights" / "model.safetensors")
    (checkpoint / "model.safetensors").symlink_to(Path("weights") / "model.safetensors")
    (tmp_path / "linked-model").symlink_to(checkpoint)
    open_source(str(checkpoint))
    open_source(str(tmp_path / "linked-model"))


def _fake_hub_snapshot(checkpoint: Path, cache: Path) -> Path:
    """The hub cache's layout: snapshots/<rev>/<file> are relative links into ../../blobs/<hash>."""
    repo = cache / "models--edgeinfer-test--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in checkpoint.iterdir():
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, repo / "blobs" / blob)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return snapshot


def test_a_hub_snapshot_made_of_links_into_blobs_exports(checkpoint, tmp_path, monkeypatch):
    from edgeinfer.export import open_source

    snapshot = _fake_hub_snapshot(checkpoint, tmp_path / "hub")
    monkeypatch.setattr(open_source, "download_from_hub", lambda repo_id: snapshot)
    manifest = export("edgeinfer-test/tiny", tmp_path / "out", ExportOptions(context_length=64), progress=False)
    assert manifest.tokenizer["chat_template"]
    # ...but a snapshot link that leaves the repo's cache folder is refused like any other.
    (snapshot / "chat_template.jinja").symlink_to(_secret_file(tmp_path, "id_rsa", SECRET))
    with pytest.raises(SourceError, match="chat_template.jinja is a link"):
        export("edgeinfer-test/tiny", tmp_path / "out2", ExportOptions(context_length=64), progress=False)


def test_export_help_documents_the_rules(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--follow-symlinks" in text and "links to places outside it" in text and "--force replaces only" in text


# --- 3. sizes from untrusted files ----------------------------------------------------------------------------


def _config(**changes) -> dict:
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **TINY,
              "num_hidden_layers": TINY["num_hidden_layers"]}
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    return config


@pytest.mark.parametrize("changes,field", [
    ({"num_hidden_layers": 10**12}, "num_hidden_layers is 1000000000000"),
    ({"hidden_size": 0}, "hidden_size is 0"),
    ({"num_attention_heads": 0}, "num_attention_heads is 0"),
    ({"num_attention_heads": 6}, "num_attention_heads is 6, which does not divide hidden size 64"),
    ({"num_key_value_heads": 3}, "num_key_value_heads is 3, which does not divide the 4 attention heads"),
    ({"vocab_size": "272"}, "vocab_size is '272'"),
    ({"intermediate_size": -1}, "intermediate_size is -1"),
    ({"head_dim": 10**6}, "head_dim is 1000000"),
    ({"max_position_embeddings": 0}, "max_position_embeddings is 0"),
    ({"rope_theta": "fast"}, "rope_theta is 'fast'"),
    ({"hidden_size": None}, "config.json has no hidden_size"),
    ({"num_attention_heads": None}, "config.json has no num_attention_heads"),
])
def test_crafted_config_sizes_are_one_line_errors(changes, field):
    with pytest.raises(SourceError) as caught:
        spec_from_hf_config(_config(**changes))
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_crafted_config_through_the_cli(checkpoint, tmp_path, capsys):
    (checkpoint / "config.json").write_text(json.dumps(_config(num_attention_heads=0)))
    err = cli_error(capsys, "export", str(checkpoint), "-o", str(tmp_path / "out"), "--context", "64")
    assert "num_attention_heads is 0" in err


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _crafted_gguf(path: Path, kvs: bytes = b"", kv_count: int = 0, tensors: bytes = b"", tensor_count: int = 0) -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, tensor_count, kv_count) + kvs + tensors)
    return path


def _kv_array(key: bytes, item_type: int, claimed: int, payload: bytes = b"") -> bytes:
    return _gguf_string(key) + struct.pack("<IIQ", 9, item_type, claimed) + payload


CRAFTED = {
    "array of 2^40 floats": lambda: (_kv_array(b"tokenizer.ggml.scores", 6, 1 << 40, b"\0" * 64), 1, b"", 0),
    "array of 2^40 strings": lambda: (_kv_array(b"tokenizer.ggml.tokens", 8, 1 << 40, _gguf_string(b"a")), 1, b"", 0),
    "string of 2^40 bytes": lambda: (_gguf_string(b"general.name") + struct.pack("<IQ", 8, 1 << 40) + b"x" * 64,
                                     1, b"", 0),
    "key of 2^40 bytes": lambda: (struct.pack("<Q", 1 << 40) + b"x" * 64, 1, b"", 0),
    "2^40 metadata keys": lambda: (b"\0" * 64, 1 << 40, b"", 0),
    "2^40 tensors": lambda: (b"", 0, b"\0" * 64, 1 << 40),
    "tensor beyond the file": lambda: (b"", 0, _gguf_string(b"token_embd.weight")
                                       + struct.pack("<IQQIQ", 2, 1 << 20, 1 << 20, 0, 0), 1),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_gguf_headers_are_refused_before_the_reader_allocates(tmp_path, case):
    kvs, kv_count, tensors, tensor_count = CRAFTED[case]()
    path = _crafted_gguf(tmp_path / "crafted.gguf", kvs, kv_count, tensors, tensor_count)
    # A subprocess with 4 GiB of address space and a time limit: the unchecked reader must not take the machine.
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
    code = limit + "import sys; from edgeinfer.cli import main; sys.exit(main(sys.argv[1:]))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, "export", str(path), "-o", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        pytest.fail("the GGUF reader ran for a minute on a crafted header")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "is not a valid GGUF file" in proc.stderr and not (tmp_path / "out").exists()


def _metadata_gguf(path: Path, **overrides) -> Path:
    """A GGUF with a tiny qwen2's metadata and no tensors (the spec is read before tensors are looked up)."""
    import gguf

    values = {"block_count": 2, "context_length": 512, "embedding_length": 64, "feed_forward_length": 128,
              "attention.head_count": 4, "attention.head_count_kv": 2, **overrides}
    writer = gguf.GGUFWriter(str(path), "qwen2")
    for key, value in values.items():
        if value is not None:
            writer.add_uint64(f"qwen2.{key}", value)
    writer.add_token_list([f"t{i}" for i in range(272)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("overrides,field", [
    ({"block_count": 10**12}, "qwen2.block_count is 1000000000000"),
    ({"embedding_length": 0}, "qwen2.embedding_length is 0"),
    ({"attention.head_count": 0}, "qwen2.attention.head_count is 0"),
    ({"attention.head_count": 6}, "qwen2.attention.head_count is 6, which does not divide"),
    ({"feed_forward_length": None}, "qwen2.feed_forward_length is None"),
    ({"attention.head_count": None}, "qwen2.attention.head_count is None"),
])
def test_crafted_gguf_sizes_are_one_line_errors(tmp_path, overrides, field):
    path = _metadata_gguf(tmp_path / "m.gguf", **overrides)
    with pytest.raises(SourceError) as caught:
        open_source(str(path))
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_a_real_gguf_passes_the_header_check(qwen2_dir, tmp_path):
    from edgeinfer.export.gguf_header import check_gguf_header

    from .gguf_fixtures import write_gguf_from_hf

    check_gguf_header(write_gguf_from_hf(qwen2_dir, tmp_path / "m.gguf"))


# --- 4. the default context fits the model ----------------------------------------------------------------------


def test_default_context_is_the_models_own_when_below_4096(qwen2_dir, tmp_path, capsys):
    assert spec_from_hf_config(json.loads((qwen2_dir / "config.json").read_text())).max_position_embeddings == 512
    assert main(["export", str(qwen2_dir), "-o", str(tmp_path / "out")]) == 0
    assert "context 512 tokens" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["context_length"] == 512
    with pytest.raises(ExportError, match="exceeds the model's 512 positions"):
        export(str(qwen2_dir), tmp_path / "o2", ExportOptions(context_length=1024), progress=False)


def test_default_context_stays_4096_for_longer_models():
    options = ExportOptions().for_model(32768)
    assert options.context_length == 4096 and ExportOptions(target="qnn").for_model(1000).context_length == 896
