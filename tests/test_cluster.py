"""Evaluation on a Dask cluster (a LocalCluster of worker processes): the same predictions, bit for bit
and in order, as a local run, also when a worker dies while it holds images."""

from __future__ import annotations

import csv
import threading
import time

import pytest
from PIL import Image

from mvu.host.model.package import load_package
from mvu.host.runtime.classify import Classifier
from mvu.host.tools.cluster import classify_on_cluster
from mvu.host.tools.evaluation import evaluate

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=50) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """24 small photos of flat colours and stripes, with made-up labels."""
    folder = tmp_path_factory.mktemp("images")
    rows = []
    for index in range(24):
        image = Image.new("RGB", (48, 40), (index * 10 % 256, 255 - index * 7 % 256, index * 29 % 256))
        for x in range(0, 48, 3 + index % 5):
            image.paste((index * 53 % 256, 90, 30), (x, 0, x + 1, 40))
        image.save(folder / f"{index:02d}.png")
        rows.append({"filename": f"{index:02d}.png", "class_index": index * 37 % 1000})
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["filename", "class_index"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _without_timings(prediction: dict) -> dict:
    return {key: value for key, value in prediction.items() if key != "seconds"}


def test_cluster_predictions_equal_local_ones_in_order(cluster, labelled, toy_package_path):
    paths = sorted(labelled.glob("*.png"))
    remote = classify_on_cluster(cluster.scheduler_address, toy_package_path, paths, backend="reference",
                                 progress=False)
    classifier = Classifier(load_package(toy_package_path), "reference")
    local = [classifier.classify(path, top=5).to_dict() for path in paths]
    assert [_without_timings(p) for p in remote] == [_without_timings(p) for p in local]


def test_eval_on_the_cluster_reports_what_a_local_eval_does(cluster, labelled, toy_package_path):
    package = load_package(toy_package_path)
    local = evaluate(package, labelled, labelled / "labels.csv", backend="numpy", progress=False)
    remote = evaluate(package, labelled, labelled / "labels.csv", backend="numpy", progress=False,
                      cluster=cluster.scheduler_address, package_path=toy_package_path)
    assert remote == local and remote["images"] == 24


def test_a_worker_that_dies_has_its_images_run_elsewhere(labelled, toy_package_path):
    paths = sorted(labelled.glob("*.png")) * 4
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as watcher:
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("predictions", classify_on_cluster(
            cluster.scheduler_address, toy_package_path, paths, backend="reference", progress=False)))
        thread.start()
        deadline = time.monotonic() + 60
        while not any(watcher.processing().values()):  # a worker holds images
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = next(address for address, tasks in watcher.processing().items() if tasks)
        nanny = next(n for n in cluster.workers.values() if n.worker_address == busy)
        nanny.process.process.kill()
        thread.join(120)
        assert not thread.is_alive()
    classifier = Classifier(load_package(toy_package_path), "reference")
    local = [_without_timings(classifier.classify(path, top=5).to_dict()) for path in paths]
    assert [_without_timings(p) for p in outcome["predictions"]] == local


def test_no_scheduler_is_a_clear_error(toy_package_path, labelled):
    with pytest.raises(ConnectionError, match="no Dask scheduler answers at tcp://127.0.0.1:9"):
        classify_on_cluster("tcp://127.0.0.1:9", toy_package_path, [], backend="numpy", progress=False)


def test_bench_network_on_the_cluster_compares_backends_image_by_image(cluster, labelled):
    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.compiler.recipes import cached_package
    from mvu.host.tools.benchmarks import bench_network_cluster

    config = HardwareConfig()
    paths = sorted(labelled.glob("*.png"))[:6]
    report = bench_network_cluster("toy", config, cluster.scheduler_address, images=paths,
                                   backends=("numpy", "reference"), progress=False)
    assert report["bit_exact"] and report["images"] == 6 and report["worker_threads"] == 2
    classifier = Classifier(cached_package("toy", config), "numpy")
    local = [classifier.classify(path, top=1).top[0]["label"] for path in paths]
    for entry in report["backends"].values():
        assert entry["top1"] == local and entry["images_per_second"] > 0
        assert "cycles_per_image" not in entry  # neither backend counts cycles


@pytest.mark.slow
def test_bench_network_on_the_cluster_reports_rtl_cycles(cluster, labelled):
    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.tools.benchmarks import bench_network_cluster

    config = HardwareConfig()
    paths = sorted(labelled.glob("*.png"))[:2]
    report = bench_network_cluster("toy", config, cluster.scheduler_address, images=paths,
                                   backends=("reference", "verilator"), progress=False)
    rtl = report["backends"]["verilator"]
    assert report["bit_exact"] and rtl["cycles_per_image"] > 0 and 0 < rtl["mac_utilization"] <= 1


def test_bench_network_names_an_unreachable_cluster(capsys):
    from mvu.host.tools.cli import main

    with pytest.raises(SystemExit) as raised:
        main(["bench", "network", "toy", "--cluster", "tcp://127.0.0.1:9", "--count", "1"])
    assert "no Dask scheduler answers at tcp://127.0.0.1:9" in str(raised.value)
