"""`mvu serve --backend board --board-port PORT`: the executor options reach the classifiers the repository
builds, and every version shares the one board; tested against a board in software on a pty, as
tests/test_board_link.py tests the link."""

import subprocess
import sys

import numpy as np
import pytest

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.executors.board_model import PtyStream, SoftwareBoard
from mvu.host.model.package import load_package
from mvu.host.runtime.classify import Classifier
from mvu.host.runtime.preprocess import preprocess
from mvu.host.runtime.scores import softmax

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")


@pytest.fixture
def board_port():
    """A software board for the toy package's configuration on a new pty; yields the host's end."""
    stream = PtyStream()
    board = SoftwareBoard(HardwareConfig(), stream, memory_bytes=8 << 20).start()
    yield stream.port
    board.stop()
    stream.close()


def test_two_versions_score_on_one_board_as_on_the_reference(start_server, toy_package_path, board_port, cat_jpeg):
    server = start_server(f"toy@1={toy_package_path}", f"toy@2={toy_package_path}", "--backend", "board",
                          "--board-port", board_port, "--baud", "115200", "--grpc-port", "-1", "--access-log", "off")
    client = httpclient.InferenceServerClient(server.url.split("://")[1])
    assert client.is_server_ready(), server.stderr[-2000:]
    assert client.get_model_metadata("toy")["platform"] == "mvu_board"
    reference = Classifier(load_package(toy_package_path), "reference")
    expected = softmax(reference.logits(preprocess(cat_jpeg, reference.recipe))[0])
    images = httpclient.InferInput("images", [2], "BYTES")
    images.set_data_from_numpy(np.array([cat_jpeg, cat_jpeg], dtype=object))
    for version in ("1", "2", "1"):  # the versions take turns on the board
        scores = client.infer("toy", [images], model_version=version).as_numpy("scores")
        np.testing.assert_allclose(scores, np.repeat(expected, 2, axis=0), rtol=1e-6, atol=1e-7)
    stats = client.get_inference_statistics("toy")["model_stats"]
    assert [entry["inference_count"] for entry in stats] == [4, 2]
    assert "Traceback" not in server.stderr


def test_the_board_backend_needs_its_port(toy_package_path):
    refused = subprocess.run([sys.executable, "-m", "mvu.host.tools.cli", "serve", str(toy_package_path),
                              "--backend", "board", "--port", "0", "--grpc-port", "-1"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "--backend board needs --board-port, the board's serial port" in refused.stderr
