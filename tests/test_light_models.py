"""The onnx package's light_* CNNs (seeded random weights) against onnxruntime.

CI compiles every model for the host and a few for the ARM targets under qemu; the script
examples/validate_light_models.py runs the full model x target matrix.
"""

from __future__ import annotations

import pytest

from onnx_graphs import LIGHT_MODELS, needs_target
from toolchain.cli import main
from toolchain.commands.build import verify_folder

# Quick under qemu; the big ones (vgg19, resnet50, ...) run in the validation script.
ARM_MODELS = ["squeezenet", "shufflenet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_host(light_model_dir, tmp_path, name):
    out = tmp_path / name
    assert main(["compile", str(light_model_dir / f"{name}.onnx"), "-t", "host", "-o", str(out)]) == 0
    results = verify_folder(out)
    assert all(c.ok and c.output_range > 0 for c in results), results


@pytest.mark.slow
@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("arm-a72", "armv7-a7")])
@pytest.mark.parametrize("name", ARM_MODELS)
def test_light_model_arm(light_model_dir, tmp_path, name, target):
    out = tmp_path / name
    assert main(["compile", str(light_model_dir / f"{name}.onnx"), "-t", target, "-o", str(out)]) == 0
    results = verify_folder(out)
    assert all(c.ok and c.output_range > 0 for c in results), results
