"""Quantize the MatMuls of an exported ONNX folder to 4 bits (MatMulNBits), as onnxruntime-genai's builder
does for CPU (block 32, symmetric, accuracy_level 4), so the optimum peer runs the same kernels.

    python bench/peers/onnx_int4.py SRC_DIR DST_DIR
"""

import shutil
import sys
from pathlib import Path

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # config, generation config, tokenizer files
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy(f, dst / f.name)
    quantizer = MatMulNBitsQuantizer(onnx.load(src / "model.onnx"), block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst / "model.onnx"), use_external_data_format=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
