"""Streaming MinMax calibration (export/calibration.py) against onnxruntime's own MinMaxCalibrater."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgeinfer.export.calibration import RangeSession, augment
from edgeinfer.package import load_manifest

from .conftest import export_tiny

OPS = {"MatMul", "Add", "Mul", "Softmax", "Concat", "Sigmoid"}


@pytest.fixture(scope="module")
def float_static(tmp_path_factory):
    package = export_tiny("preset:tiny-qwen2", tmp_path_factory.mktemp("calib") / "fp32-static", target="qnn",
                          precision="fp32", prefill_chunk=16)
    manifest = load_manifest(package)
    return package / manifest.graphs["prefill"]["parts"][0]["file"]


def random_feeds(model_path, count: int) -> list[dict]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    return [{i.name: rng.standard_normal(i.shape).astype(np.float32) * (k + 1) for i in session.get_inputs()}
            for k in range(count)]


def test_streamed_ranges_equal_onnxruntime_minmax_calibrator(float_static, tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    feeds = random_feeds(float_static, 3)
    calibrator = create_calibrator(float_static, list(OPS), augmented_model_path=str(tmp_path / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True)
    reader = iter(feeds)
    calibrator.collect_data(type("Reader", (), {"get_next": lambda self: next(reader, None)})())
    expected = calibrator.compute_data()

    path, names = augment(float_static, OPS)
    session = RangeSession(path, names)
    plain = ort.InferenceSession(str(float_static), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in plain.get_outputs()]
    for feed in feeds:  # the augmented graph answers as the float graph does (unpacked MatMuls round differently)
        for ours, reference in zip(session.run(outputs, feed), plain.run(outputs, feed)):
            np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    ours = session.tensors_data()

    assert session.feeds == 3 and set(ours.data) == set(expected.data) and len(names) > 50
    for name in expected.data:
        np.testing.assert_allclose(ours.data[name].range_value, expected.data[name].range_value, rtol=1e-5, err_msg=name)
    # The ranges grew with the larger feeds: a fold that kept only the first or last feed would differ.
    assert ours.data["position_cos"].range_value[1] > 2.5
