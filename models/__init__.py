"""Model recipes: ONNX graphs the project builds itself (real weights from packages, or seeded random ones)."""
