"""The quantized model format the compiler writes and the runtime reads: layers, quantization, packages."""
