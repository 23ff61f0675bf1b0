"""Python API: the same commands as the CLI, for scripts and build pipelines.

::

    from toolchain import api, models
    from toolchain.compress import Context, Quantize, compress

    small, _ = compress(models.trained("mlp16"), [Quantize("fixed<8,3>")],
                        Context.for_zoo("mlp16"))
    report = api.compile(small, "fpga-xcu250", "out/", input_shape={"input": (1, 16)})
    sim = api.simulate("out/", dataset="mlp16")

Options are the fields of the target family's typed options class (``toolchain.options``:
``CpuOptions``, ``CortexMOptions``, ``FpgaOptions``), the CLI's long options with underscores
(``reuse_factor=["4"]``, ``io_type="io_stream"``, ``budget="dsp=500"``); they build that object
directly, validated as the CLI and a build file validate it. An option of another family is
an error. Errors are the same ``EdgecError`` subclasses the CLI prints as one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from .errors import ConfigError

if TYPE_CHECKING:
    from .options import CommonOptions


def _shapes(input_shape) -> tuple[str, ...]:
    if input_shape is None:
        return ()
    if isinstance(input_shape, Mapping):
        return tuple(f"{k}={','.join(str(int(d)) for d in v)}" for k, v in input_shape.items())
    if isinstance(input_shape, str):
        return (input_shape,)
    return tuple(input_shape)


def check(model, targets, *, input_shape=None, module_path=()) -> dict:
    """Which nodes of ``model`` (an ONNX or .pt path, or an ``onnx.ModelProto`` with static
    input shapes) each of ``targets`` (a name or a list) takes, before any slow step: what
    ``edgec check --json`` prints (``ok``, and per target ``supported_ops``, ``unsupported``
    with each node's reason, ``all``)."""
    import onnx

    from .commands.check import check_result, load
    from .onnx_io import fix_input_shapes

    names = [targets] if isinstance(targets, str) else list(targets)
    if isinstance(model, onnx.ModelProto):
        return check_result(fix_input_shapes(model, {}), names, model.graph.name or "model")
    return check_result(load(Path(model), list(_shapes(input_shape)), module_path), names,
                        str(model))


def compile_options(target: str, *, input_shape=None, **values) -> "CommonOptions":
    """The typed compile options of ``target``'s family (e.g. ``CpuOptions``), validated:
    ``values`` are its fields; an option of another family is a ConfigError naming it."""
    from .targets import device
    from .targets.registry import typed_options

    return typed_options(device(target), {"input_shape": _shapes(input_shape), **values})


def compile(model, target: str, output: str | Path, *, input_shape=None, options=None,
            module_path=(), **values) -> dict:
    """Compile ``model`` (ONNX/.pt path or an ``nn.Module``) for ``target`` into ``output``.

    ``input_shape``: ``{"input": (1, 16)}`` or ``"input=1,16"`` (needed for PyTorch input and
    for dynamic ONNX dimensions). The family's options are either ``values`` (its field
    names, e.g. ``threads=2``) or ``options``, an object of its class (``api.compile_options``,
    ``CpuOptions(...)``), not both. Returns the report written to ``output/report.json``.
    """
    from dataclasses import replace

    from .commands.build import compile_folder

    if options is None:
        options = compile_options(target, input_shape=input_shape, **values)
    elif values:
        raise ConfigError("give the options either as an options object or as keywords "
                          f"({', '.join(values)}), not both")
    elif input_shape is not None:
        options = replace(options, input_shape=_shapes(input_shape))
    return compile_folder(model, target, Path(output), options,
                          module_paths=[Path(p) for p in module_path])


def verify(output: str | Path, *, inputs=None, seed: int = 0,
           tolerance: float | None = None) -> list[dict]:
    """Run the folder's artifact and onnxruntime on the same inputs (``edgec verify``).

    Returns one comparison per output; raises VerificationError if one is outside tolerance.
    """
    from .commands.build import raise_if_outside, verify_folder

    results = verify_folder(Path(output), [Path(x) for x in inputs or []], seed, tolerance)
    raise_if_outside(results)
    return [c.to_json() for c in results]


def simulate(output: str | Path, *, json_path: str | Path | None = None, **values) -> dict:
    """Run the target's simulators on a compiled folder (``edgec simulate``) with the
    family's simulate options (``dataset="mlp16"``, ``no_rtl=True``); the compile options
    are the folder's own. The report is also written to ``output/simulation.json`` (or
    ``json_path``)."""
    from .commands.build import simulate_folder

    report = simulate_folder(Path(output), values)
    dest = Path(json_path) if json_path is not None else Path(output) / "simulation.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    return report
