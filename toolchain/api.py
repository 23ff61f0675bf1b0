"""Python API: the same commands as the CLI, for scripts and build pipelines.

::

    from toolchain import api, models
    from toolchain.compress import Context, Quantize, compress

    small, _ = compress(models.trained("mlp16"), [Quantize("fixed<8,3>")],
                        Context.for_zoo("mlp16"))
    report = api.compile(small, "fpga-xcu250", "out/", input_shape={"input": (1, 16)})
    sim = api.simulate("out/", dataset="mlp16")

Options are the CLI's long options with underscores (``reuse_factor=4``, ``io_type="io_stream"``,
``budget=["dsp=500"]``); a list repeats the option, ``True`` sets a flag. Errors are the same
``EdgecError`` subclasses the CLI prints as one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError


def _argv(command: str, positional: list[str], options: Mapping[str, Any]) -> list[str]:
    argv = [command, *positional]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv


def _parse(argv: list[str]):
    from .cli import _build_parser

    parser = _build_parser()
    try:
        return parser.parse_args(argv)
    except SystemExit:
        # argparse has printed why; say it once more as an exception for callers
        raise ConfigError(f"bad options for 'edgec {' '.join(argv)}'") from None


def _shapes(input_shape) -> list[str]:
    if input_shape is None:
        return []
    if isinstance(input_shape, Mapping):
        return [f"{k}={','.join(str(int(d)) for d in v)}" for k, v in input_shape.items()]
    if isinstance(input_shape, str):
        return [input_shape]
    return list(input_shape)


def compile(model, target: str, output: str | Path, *, input_shape=None, **options) -> dict:
    """Compile ``model`` (ONNX/.pt path or an ``nn.Module``) for ``target`` into ``output``.

    ``input_shape``: ``{"input": (1, 16)}`` or ``"input=1,16"`` (needed for PyTorch input and
    for dynamic ONNX dimensions). Returns the report written to ``output/report.json``.
    """
    from .commands.build import compile_folder

    is_path = isinstance(model, (str, Path))
    args = _parse(_argv("compile", [str(model) if is_path else "module.pt"],
                        {"target": target, "output": str(output),
                         "input_shape": _shapes(input_shape), **options}))
    if not is_path:
        args.model = model
    return compile_folder(args)


def verify(output: str | Path, *, inputs=None, seed: int = 0,
           tolerance: float | None = None) -> list[dict]:
    """Run the folder's artifact and onnxruntime on the same inputs (``edgec verify``).

    Returns one comparison per output; raises VerificationError if one is outside tolerance.
    """
    from .commands.build import raise_if_outside, verify_folder

    results = verify_folder(Path(output), [Path(x) for x in inputs or []], seed, tolerance)
    raise_if_outside(results)
    return [c.to_json() for c in results]


def simulate(output: str | Path, **options) -> dict:
    """Run the target's simulators on a compiled folder (``edgec simulate``); the report is
    also written to ``output/simulation.json``."""
    from .commands.build import cmd_simulate

    args = _parse(_argv("simulate", [str(output)], options))
    cmd_simulate(args)
    dest = args.json or Path(output) / "simulation.json"
    return json.loads(Path(dest).read_text())
