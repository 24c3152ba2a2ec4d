"""TensorFlow Serving apart from its encodings: what its REST and gRPC forms share."""

from __future__ import annotations

from mvu.host.serving.errors import ServingError
from mvu.host.serving.served_model import SCORES_OUTPUT, ServedModel

__all__ = ["DTYPES", "DTYPE_OF", "PREDICT_METHOD", "SIGNATURE", "TF_SCORES_OUTPUT", "check_signature", "signature",
           "tf_name", "oip_name"]

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
#: The class scores' name in TensorFlow Serving's answers and metadata, as the hosted FPGA service named it.
TF_SCORES_OUTPUT = "output_alias"

#: TensorFlow DataType -> (Open Inference Protocol datatype, the TensorProto field of its typed values)
DTYPES = {
    "DT_FLOAT": ("FP32", "float_val"), "DT_DOUBLE": ("FP64", "double_val"), "DT_HALF": ("FP16", "half_val"),
    "DT_INT8": ("INT8", "int_val"), "DT_INT16": ("INT16", "int_val"), "DT_INT32": ("INT32", "int_val"),
    "DT_INT64": ("INT64", "int64_val"), "DT_UINT8": ("UINT8", "int_val"), "DT_UINT16": ("UINT16", "int_val"),
    "DT_UINT32": ("UINT32", "uint32_val"), "DT_UINT64": ("UINT64", "uint64_val"), "DT_BOOL": ("BOOL", "bool_val"),
    "DT_STRING": ("BYTES", "string_val"),
}
#: Open Inference Protocol datatype -> TensorFlow DataType
DTYPE_OF = {datatype: dtype for dtype, (datatype, _) in DTYPES.items()}


def check_signature(model: str, name: str) -> None:
    """400 unless ``name`` is the one signature (or empty: the default)."""
    if name not in ("", SIGNATURE):
        raise ServingError(400, f"model {model!r} has no signature {name!r}; its signature is {SIGNATURE!r}")


def tf_name(name: str) -> str:
    """An output's name in TensorFlow Serving's signature (the scores are ``output_alias``)."""
    return TF_SCORES_OUTPUT if name == SCORES_OUTPUT else name


def oip_name(name: str) -> str:
    """The inverse of :func:`tf_name`; the scores' own name is accepted too."""
    return SCORES_OUTPUT if name == TF_SCORES_OUTPUT else name


def signature(model: ServedModel) -> dict[str, dict[str, tuple[str, list[int]]]]:
    """The signature's "inputs" and "outputs": ``{name: (TensorFlow dtype, shape)}`` each."""
    metadata = model.metadata()
    return {side: {tf_name(entry["name"]):
                   (DTYPE_OF[entry["datatype"]], entry["shape"]) for entry in metadata[side]}
            for side in ("inputs", "outputs")}
