"""The host: executors, GEMM programs, the quantized model format, the runtime, the compiler, the scoring
service and the tools (docs/architecture.md)."""

__version__ = "0.1.0"
