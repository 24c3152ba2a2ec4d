"""The scoring service: model packages served over HTTP and gRPC.

Data flow: a transport (``http_app``, ``grpc_server``) hands each request to the shared ``envelope`` (API key,
errors as statuses, metrics, access log) and to its protocol's module (``oip_http``, ``tfserving_http``,
``score_http``; ``oip_grpc``, ``tfserving_grpc``; what a protocol's two forms share is in ``oip``,
``oip_repository`` and ``tfserving``), which parses it into :class:`~mvu.host.serving.tensors.InferenceRequest`;
the :class:`~mvu.host.serving.repository.ModelRepository` (which also loads and unloads models while serving)
finds the version, a :class:`~mvu.host.serving.served_model.ServedModel`, whose
:class:`~mvu.host.serving.batching.BatchScheduler` queues it for the runtime's classifier. Below the HTTP
application, ``http_connection`` gives every stage of a connection a deadline.
"""
