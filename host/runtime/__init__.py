"""Running a quantized model: the layer runner, the classifier on top of it, and image preprocessing."""
