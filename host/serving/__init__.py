"""The scoring service: model packages served over HTTP and gRPC.

Data flow: a transport (``http_app``, ``grpc_server``) hands each request to the shared ``envelope`` (API key,
errors as statuses, metrics, access log) and to its protocol's module (``oip_http``, ``tfserving_http``,
``score_http``; ``oip_grpc``, ``tfserving_grpc``; what a protocol's two forms share is in ``oip`` and
``tfserving``), which parses it into :class:`~mvu.host.serving.tensors.InferenceRequest`; the
:class:`~mvu.host.serving.repository.ModelRepository` finds the model, whose
:class:`~mvu.host.serving.batching.BatchScheduler` queues it for the runtime's classifier.
"""
