"""The scoring service: model packages served over HTTP and gRPC.

Data flow: a protocol front end (``http_app`` for Open Inference Protocol v2,
TensorFlow Serving REST and raw image scoring; ``grpc_services`` for their
gRPC forms) parses a request into :class:`~mvu.serving.tensors.InferenceRequest`,
the :class:`~mvu.serving.repository.ModelRepository` finds the model, and the
model's :class:`~mvu.serving.batching.BatchScheduler` runs it on its executor.
"""
