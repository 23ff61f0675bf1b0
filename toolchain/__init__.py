"""edgec: compress -> export (ONNX) -> optimize (TVM Relax) -> emit (ARM / FPGA) -> verify."""

__version__ = "0.1.0"
