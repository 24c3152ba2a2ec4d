"""Running a quantized model: the layer runner (batches, power-of-two sub-batches), the classifier on top of
it, class scores (softmax, top-k) and image preprocessing; `mvu serve` and the CLI both use it."""
