"""The request envelope both transports share: keys, errors as statuses, metrics, the access log."""

import asyncio
import json
import logging

import pytest

from mvu.host.serving.api_keys import ApiKeys, create_key_file
from mvu.host.serving.backend import ServingBackend
from mvu.host.serving.envelope import Call, Endpoint, Envelope
from mvu.host.serving.errors import ServingError
from mvu.host.serving.repository import ModelRepository, ModelSpec


class Transport:
    """Answers an error with ("error", status, message) and logs the status as it came."""

    def error_response(self, error):
        return ("error", error.status, error.message)

    def log_fields(self, response, error):
        return {"status": error.status if error else "fine"}


@pytest.fixture(scope="module")
def repository(toy_package_path):
    repository = ModelRepository(ServingBackend("numpy"))
    repository.add(ModelSpec(toy_package_path))
    yield repository
    repository.close()


def answer(envelope, handler, model=None, authorization=None, open_access=False):
    call = Call("test", Endpoint("thing", handler, open_access), "TEST /thing", "peer", authorization, model=model,
                internal_error="thing failed", log={"path": "/thing"})
    return asyncio.run(envelope.answer(call, handler))


def count(repository, *labels, metric="requests"):
    return getattr(repository.metrics, metric).labels(*labels)._value.get()


def test_answers_count_and_log(repository, caplog):
    caplog.set_level(logging.INFO, logger="mvu.access")
    envelope = Envelope(repository, None, Transport())

    async def ok():
        return "response"

    async def missing():
        raise ServingError(404, "no such thing")

    before = count(repository, "test", "thing", "200")
    assert answer(envelope, ok, model="toy") == "response"
    assert count(repository, "test", "thing", "200") == before + 1
    line = json.loads(caplog.records[-1].getMessage())
    assert {k: line[k] for k in ("client", "path", "status", "protocol", "endpoint", "model")} == {
        "client": "peer", "path": "/thing", "status": "fine", "protocol": "test", "endpoint": "thing", "model": "toy"}
    assert line["ms"] >= 0

    failures = count(repository, "toy", "404", metric="failures")
    assert answer(envelope, missing, model="toy") == ("error", 404, "no such thing")
    assert answer(envelope, missing, model="made-up") == ("error", 404, "no such thing")
    assert count(repository, "toy", "404", metric="failures") == failures + 1  # a served model only
    assert json.loads(caplog.records[-1].getMessage())["status"] == 404


def test_unexpected_failures_are_500s_without_internals(repository, caplog):
    async def broken():
        raise RuntimeError("secret internals")

    assert answer(Envelope(repository, None, Transport()), broken) == ("error", 500, "thing failed")
    failure = next(r for r in caplog.records if r.name == "mvu.host.serving")
    assert failure.getMessage() == "TEST /thing failed" and "secret internals" in caplog.text


def test_keys_are_checked_unless_the_endpoint_is_open(repository, tmp_path):
    keys = create_key_file(tmp_path / "keys.json")
    envelope = Envelope(repository, ApiKeys(tmp_path / "keys.json"), Transport())

    async def ok():
        return "response"

    assert answer(envelope, ok) == ("error", 401, "missing API key: send the header 'Authorization: Bearer <key>'")
    assert answer(envelope, ok, authorization="Bearer wrong")[:2] == ("error", 401)
    assert answer(envelope, ok, authorization=f"Bearer {keys['primary']}") == "response"
    assert answer(envelope, ok, open_access=True) == "response"
