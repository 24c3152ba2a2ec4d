"""The gRPC messages, compiled from ``protos/*.proto`` at first use into a private descriptor pool.

No generated ``*_pb2`` modules: the messages live in their own
:class:`~google.protobuf.descriptor_pool.DescriptorPool`, so they never clash with
other copies of the same packages in the process (``tritonclient``'s ``inference``,
TensorFlow's ``tensorflow``).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

__all__ = ["PROTO_DIR", "PROTO_FILES", "message_pool", "message_class", "service"]

PROTO_DIR = Path(__file__).with_name("protos")
PROTO_FILES = ("model_config.proto", "grpc_service.proto", "tensorflow.proto", "tensorflow_serving.proto")


@functools.cache
def message_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding :data:`PROTO_FILES` and their imports, compiled once per process with grpc_tools' protoc."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).with_name("_proto")  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory(prefix="mvu-protos-") as tmp:
        out = Path(tmp) / "protos.pb"
        status = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", "--include_imports",
                              f"--descriptor_set_out={out}", *PROTO_FILES])
        if status != 0:
            raise RuntimeError(f"protoc could not compile {', '.join(PROTO_FILES)} in {PROTO_DIR} (exit {status})")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:  # dependencies come first
        pool.Add(file)
    return pool


@functools.cache
def message_class(full_name: str) -> type[Message]:
    """The message class of ``full_name``, e.g. ``"inference.ModelInferRequest"``."""
    return message_factory.GetMessageClass(message_pool().FindMessageTypeByName(full_name))


def service(full_name: str) -> ServiceDescriptor:
    """The service descriptor of ``full_name``, e.g. ``"inference.GRPCInferenceService"``."""
    return message_pool().FindServiceByName(full_name)
