"""The residual-stream rotation folded into a qnn package's weights changes what the quantizer sees, not the model."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.export.exporter import export
from edgeinfer.export.open_source import open_source
from edgeinfer.export.options import ExportOptions
from edgeinfer.export.rotation import RotatedResidual
from edgeinfer.hadamard import hadamard, rotation
from edgeinfer.package import load_package
from edgeinfer.static_runner import StaticEngine


@pytest.mark.parametrize("size", [64, 128, 896, 1536, 2048, 3072])
def test_rotations_are_orthogonal_hadamard_matrices_for_model_widths(size):
    q = rotation(size)
    np.testing.assert_allclose(q @ q.T, np.eye(size), atol=1e-12)
    # Every entry +-1/sqrt(size): a spike in one channel spreads evenly over all of them.
    np.testing.assert_allclose(np.abs(q), 1 / np.sqrt(size), rtol=1e-12)


def test_a_width_without_a_hadamard_construction_gets_a_random_orthogonal_matrix():
    assert hadamard(6) is None  # 6 = 2 x 3: no Hadamard matrix of order 6 exists
    q = rotation(6)
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-12)


def static_logits(package, ids: list[int]) -> np.ndarray:
    runner = StaticEngine(get_backend("cpu"), load_package(package), BackendOptions()).new_runner()
    rows = [runner.forward(ids[:12], 0).copy()]  # the runner's logits buffer is rewritten each run
    rows += [runner.forward([token], 12 + k).copy() for k, token in enumerate(ids[12:])]
    return np.stack(rows)


def test_the_rotated_float_graph_computes_the_same_logits(qwen2_dir, tmp_path):
    options = ExportOptions(target="qnn", precision="fp32", context_length=64, prefill_chunk=16)
    plain = export(str(qwen2_dir), tmp_path / "plain", options, progress=False)
    rotated_source = RotatedResidual(open_source(str(qwen2_dir)))
    export(rotated_source, tmp_path / "rotated", options, progress=False)
    assert plain.spec.tie_word_embeddings is False
    ids = np.random.default_rng(0).integers(0, 256, 20).tolist()
    expected, got = static_logits(tmp_path / "plain", ids), static_logits(tmp_path / "rotated", ids)
    np.testing.assert_allclose(got, expected, atol=2e-4 * np.abs(expected).max())
    # ...while the stored weights really are different (the rotation was applied, not skipped).
    assert not np.allclose(np.load(tmp_path / "plain" / "embeddings.npy"), np.load(tmp_path / "rotated" / "embeddings.npy"))


def test_tied_embeddings_are_untied_by_the_final_norm_gain(tmp_path):
    from .conftest import make_hf_checkpoint

    folder = make_hf_checkpoint(tmp_path / "tied", tie_word_embeddings=True)
    source = open_source(str(folder))
    rotated = RotatedResidual(source)
    assert source.spec.tie_word_embeddings and not rotated.spec.tie_word_embeddings
    q = rotation(source.spec.hidden_size)
    gain = source.tensor("model.norm.weight")
    expected = source.tensor("model.embed_tokens.weight") * gain @ q
    np.testing.assert_allclose(rotated.tensor("lm_head.weight"), expected, rtol=1e-5, atol=1e-6)
