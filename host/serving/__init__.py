"""The scoring service: model packages served over HTTP and gRPC.

Data flow: a protocol front end (``http_app`` for Open Inference Protocol v2,
TensorFlow Serving REST and raw image scoring; ``grpc_services`` for their
gRPC forms) parses a request into :class:`~mvu.host.serving.tensors.InferenceRequest`,
the :class:`~mvu.host.serving.repository.ModelRepository` finds the model, and the
model's :class:`~mvu.host.serving.batching.BatchScheduler` runs it on its executor.
"""
