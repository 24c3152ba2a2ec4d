"""QDQ models as onnxruntime's static quantizer makes them by default (QuantizeLinear/DequantizeLinear around
float ops), for tests/test_qdq.py and tests/measure_qdq.py."""

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


def quantize_qdq(fp32: onnx.ModelProto, images: np.ndarray, folder: Path, *, opset: int | None = None,
                 activations: QuantType = QuantType.QUInt8, per_channel: bool = True) -> Path:
    """``fp32`` (at ``opset`` if given) quantized to QDQ, int8 weights, calibrated on ``images`` [N, C, H, W]:
    the path of the model written in ``folder``."""
    if opset is not None and opset != fp32.opset_import[0].version:
        fp32 = onnx.version_converter.convert_version(fp32, opset)
    source, folded, target = (folder / f"{name}.onnx" for name in ("fp32", "folded", "qdq"))
    onnx.save(fp32, source)
    quant_pre_process(str(source), str(folded), skip_symbolic_shape=True)  # folds BatchNorm into Conv
    name = fp32.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({name: image[None].astype(np.float32)} for image in images)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(folded), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=activations, weight_type=QuantType.QInt8)
    return target
