"""edgec targets / compile / run / verify / simulate: the target-independent part of each."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from toolchain.errors import ConfigError, ModelError, VerificationError
from toolchain.onnx_io import (TensorSpec, fix_input_shapes, graph_inputs, input_specs,
                               load_model, load_model_upgraded, output_specs, output_steps,
                               parse_input_shapes, random_inputs)
from toolchain.options import flag_of
from toolchain.outdir import staged_output
from toolchain.reports.schema import SCHEMA_VERSION
from toolchain.torch_input import export_module, input_shape_for, is_torch_file, load_module
from toolchain.targets import backend_for, device, devices
from toolchain.targets.registry import refuse_unsupported
from toolchain.targets.registry import (add_option_flags, as_options, available_backends,
                                        option_names, option_owner, typed_options)

log = logging.getLogger(__name__)

MANIFEST = "edgec.json"


def _backends() -> list:
    """The backends of every family that has devices (see ``available_backends``)."""
    return available_backends()


# ---------------------------------------------------------------- targets
def register_targets(sub) -> None:
    p = sub.add_parser("targets", help="list the targets and what each one is")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_targets, command_parser=p)


def cmd_targets(args) -> int:
    rows = []
    for name, dev in devices().items():
        rows.append({"name": name, "family": dev.family, "summary": dev.summary,
                     "detail": backend_for(dev.family).describe(dev)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['family']:<7}  {r['summary']}")
        print(f"{'':<{width}}         {r['detail']}")
    return 0


# ---------------------------------------------------------------- compile
def register_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile an ONNX model for a target into a folder",
                       description="Compile MODEL.onnx for --target into OUT/: artifacts, "
                                   "report.json, model.onnx and edgec.json (the manifest).")
    p.add_argument("model", nargs="?", type=Path,
                   help="the ONNX model, or a PyTorch module saved with torch.save(model, "
                        "'M.pt') (then --input-shape NAME=D1,... is required; it is exported "
                        "to ONNX, QDQ if it carries edgec's quantizers)")
    p.add_argument("-t", "--target", help="target name (see 'edgec targets')")
    p.add_argument("-o", "--output", type=Path, help="output folder")
    p.add_argument("--module-path", action="append", default=[], metavar="DIR",
                   help="folder with the source a pickled .pt module needs (repeatable)")
    p.add_argument("--config", type=Path, help="TOML file with a [compile] table of options")
    # The flags come from the families' options classes (toolchain/options.py): --input-shape
    # for every target, then a group per family; another family's option is an error.
    add_option_flags(p, "compile")
    p.set_defaults(func=cmd_compile, command_parser=p)


def cmd_compile(args) -> int:
    for key, flag in (("model", "MODEL"), ("target", "--target"), ("output", "-o OUT")):
        if getattr(args, key) is None:
            raise ConfigError(f"compile needs {flag} (on the command line or in --config)")
    options = typed_options(device(args.target), {n: getattr(args, n, None)
                                                  for n in option_names("compile")})
    report = compile_folder(args.model, args.target, args.output, options,
                            module_paths=args.module_path)
    print(f"compiled {report['input_model']} for {report['target']} into {Path(args.output)}/ "
          f"in {report['total_seconds']:.1f} s")
    return 0


def compile_folder(model, target: str, output: Path, options=None, *,
                   module_paths=()) -> dict:
    """Compile ``model`` (an ONNX or .pt path, or an ``nn.Module`` object) for ``target``
    into ``output``; return the report that was written there.

    ``options``: the target family's typed options (``Backend.Options``, e.g. CpuOptions),
    a mapping of them, or None for the defaults. They are saved in the manifest.
    """
    dev = device(target)
    backend = backend_for(dev.family)
    options = as_options(dev, options)
    shapes = parse_input_shapes(options.input_shape)
    if isinstance(model, (str, Path)):
        model_path = Path(model)
        source = model_path.name
        torch_input = is_torch_file(model_path)
        module = load_module(model_path, module_paths=list(module_paths)) \
            if torch_input else None
    else:  # an nn.Module from the Python API
        if not hasattr(model, "state_dict"):
            raise ConfigError(f"model must be a path or a torch.nn.Module, got "
                              f"{type(model).__name__}")
        module, torch_input = model, True
        source = type(module).__name__
        model_path = Path(f"{source}.pt")
    if torch_input:
        input_name, input_shape = input_shape_for(shapes, source)
    else:
        loaded, upgraded = load_model_upgraded(model_path)
        _refuse_contradicting_shapes(loaded, shapes)
        model = fix_input_shapes(loaded, shapes)
    started = time.perf_counter()
    with staged_output(output) as stage:
        if torch_input:
            # exported (and checked against PyTorch) into the folder as its model.onnx
            export_module(module, stage / "model.onnx", input_shape, input_name)
            model = fix_input_shapes(load_model(stage / "model.onnx"), {})
        elif upgraded:
            # The file needed UpgradeModel (an old IR/opset that onnxruntime may refuse too):
            # the folder keeps the upgraded model, which verify runs onnxruntime on.
            from toolchain.onnx_io import save_model

            save_model(loaded, stage / "model.onnx")
        else:
            shutil.copyfile(model_path, stage / "model.onnx")
        # partitioner-style, before any slow step: every refused node counted
        refuse_unsupported(backend.support(model, dev), dev.name,
                           source if torch_input else str(model_path))
        report = backend.compile(model_path, model, dev, options, stage)
        manifest = {
            "edgec": 1,
            "target": dev.name,
            "family": dev.family,
            "inputs": [s.to_json() for s in input_specs(model)],
            "outputs": [s.to_json() for s in output_specs(model)],
            "tolerance": report.get("tolerance", 1e-4),
            # quantized outputs: onnxruntime and the artifact may differ by one step
            "output_steps": report.get("output_steps", output_steps(model)),
            "options": options.to_json(),  # the typed options; run/verify/simulate read them
            **({"lm": report["lm"]} if "lm" in report else {}),  # a language model
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        report.setdefault("target", dev.name)
        report.setdefault("input_model", source)
        report["total_seconds"] = round(time.perf_counter() - started, 3)
        report["schema_version"] = SCHEMA_VERSION  # toolchain/reports/schema.py documents it
        (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _refuse_contradicting_shapes(model, shapes: dict[str, tuple[int, ...]]) -> None:
    """An --input-shape whose dimension differs from a static dimension of the model's input
    is an error (a symbolic or unknown dimension takes any size)."""
    for inp in graph_inputs(model):
        if inp.name not in shapes or not inp.type.tensor_type.HasField("shape"):
            continue
        dims = inp.type.tensor_type.shape.dim
        given = shapes[inp.name]
        if len(dims) != len(given):
            continue  # fix_input_shapes says the rank differs
        if any(d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != g
               for d, g in zip(dims, given)):
            shown = ",".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                             else (d.dim_param or "?") for d in dims)
            raise ConfigError(f"--input-shape {inp.name}={','.join(map(str, given))} "
                              f"contradicts the model's static shape {inp.name}[{shown}]")


# ---------------------------------------------------------------- helpers for built folders
def read_manifest(out_dir: Path) -> dict:
    """The folder's edgec.json; its options are validated as the family's options class
    (``folder_options``), so a folder with a foreign or bad option is a one-line error."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{out_dir} is not an edgec output folder (no {MANIFEST}); "
                          "create one with 'edgec compile'")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    folder_options(manifest, path)
    return manifest


def folder_options(manifest: dict, path: Path | str = MANIFEST):
    """The typed compile options a folder was built with (its family's ``Options``)."""
    try:
        cls = backend_for(manifest["family"]).Options
        return cls.from_json(manifest.get("options") or {})
    except KeyError as exc:
        raise ConfigError(f"{path} lacks the key {exc}; compile the folder again") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_inputs(manifest: dict, paths: list[Path], seed: int) -> list[np.ndarray]:
    specs = [TensorSpec.from_json(d) for d in manifest["inputs"]]
    if not paths:
        return random_inputs(specs, seed)
    if len(paths) != len(specs):
        raise ConfigError(f"the model has {len(specs)} input(s) "
                          f"({', '.join(s.name for s in specs)}); {len(paths)} --input given")
    arrays = []
    for spec, path in zip(specs, paths):
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise ConfigError(f"input file not found: {path}") from None
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot read {path} as a .npy array: {exc}") from None
        if tuple(arr.shape) != spec.shape:
            raise ConfigError(f"input '{spec.name}' from {path} has shape {tuple(arr.shape)}, "
                              f"the model expects {spec.shape}")
        arrays.append(np.ascontiguousarray(arr.astype(spec.dtype, copy=False)))
    return arrays


# ---------------------------------------------------------------- run
def register_run(sub) -> None:
    p = sub.add_parser("run", help="run a compiled model (natively or under qemu)")
    p.add_argument("out_dir", type=Path, help="folder written by 'edgec compile'")
    p.add_argument("--input", action="append", type=Path, default=[], metavar="X.npy",
                   help="input array (repeat per input); default: seeded random")
    p.add_argument("--output", action="append", type=Path, default=[], metavar="Y.npy",
                   help="where to save each output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="speed per kernel into OUT/profile.json (the HTML report shows it): "
                        "median time per kernel natively, exact instructions per kernel "
                        "under qemu (a separate profiling build; OUT/model is unchanged)")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="with --profile: timed runs per kernel (default 50)")
    p.set_defaults(func=cmd_run, command_parser=p)


def cmd_run(args) -> int:
    manifest = read_manifest(args.out_dir)
    inputs = load_inputs(manifest, args.input, args.seed)
    if args.profile or args.runs is not None:
        if not args.profile or args.output:
            raise ConfigError("--runs needs --profile" if not args.profile else
                              "--profile writes OUT/profile.json, not --output")
        return _profile(Path(args.out_dir), manifest, inputs, 50 if args.runs is None
                        else args.runs)
    if args.output and len(args.output) != len(manifest["outputs"]):
        raise ConfigError(f"the model has {len(manifest['outputs'])} output(s); "
                          f"{len(args.output)} --output given")
    for dest in args.output:  # before the run, so a typo does not cost a run
        _check_writable_file(Path(dest), "--output")
    outputs = backend_for(manifest["family"]).run(Path(args.out_dir), inputs)
    for i, (spec, arr) in enumerate(zip(manifest["outputs"], outputs)):
        if args.output:
            try:
                np.save(args.output[i], arr)
            except OSError as exc:
                raise ConfigError(f"cannot write --output {args.output[i]}: "
                                  f"{exc.strerror or exc}") from None
            print(f"{spec['name']}: shape {list(arr.shape)} -> {args.output[i]}")
        else:
            flat = arr.reshape(-1)
            print(f"{spec['name']}: shape {list(arr.shape)} first values {np.round(flat[:8], 5).tolist()}")
    return 0


def _profile(out_dir: Path, manifest: dict, inputs: list, runs: int) -> int:
    """``edgec run OUT --profile``: the family's per-kernel profile, saved and printed."""
    from toolchain.reports.schema import to_json

    backend = backend_for(manifest["family"])
    if not hasattr(backend, "profile"):
        raise ConfigError(f"--profile is not available for target {manifest['target']} "
                          f"(family {manifest['family']})")
    prof = backend.profile(out_dir, inputs, runs)
    part = out_dir / "profile.json.part"
    part.write_text(json.dumps(to_json(prof), indent=2) + "\n")
    part.replace(out_dir / "profile.json")
    time = prof.kind == "time"
    fmt = (lambda v: f"{v * 1e6:.2f} us") if time else (lambda v: f"{v:,.0f}")
    width = max((len(k) for k in prof.kernels), default=6)
    print(f"{'kernel':<{width}}  calls  {'median time' if time else 'instructions':>14}  share")
    for name, k in prof.kernels.items():
        print(f"{name:<{width}}  {k.calls:>5}  {fmt(k.value):>14}  {100 * k.share:5.1f}%")
    print(f"kernels {fmt(prof.kernel_sum)}, whole inference {fmt(prof.total)} "
          f"({'median of ' + str(prof.runs) + ' runs, ' if time else 'exact, '}"
          f"{prof.where}) "
          f"-> {out_dir / 'profile.json'}")
    return 0


def _check_writable_file(path: Path, option: str) -> None:
    """A one-line ConfigError unless ``path`` can be created as a file (its folder exists)."""
    if path.is_dir():
        raise ConfigError(f"cannot write {option} {path}: it is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"cannot write {option} {path}: the folder {folder} does not exist")


# ---------------------------------------------------------------- verify
def register_verify(sub) -> None:
    p = sub.add_parser("verify", help="run a compiled model and compare with onnxruntime")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--input", action="append", type=Path, default=[], metavar="X.npy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=None,
                   help="allowed max abs error relative to the output's range "
                        "(default: the target's, 1e-4 for float32)")
    p.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    p.set_defaults(func=cmd_verify, command_parser=p)


def verify_folder(out_dir: Path, inputs_paths: list[Path] | None = None, seed: int = 0,
                  tolerance: float | None = None) -> list:
    """Run the artifact in ``out_dir`` and onnxruntime on its model.onnx; compare outputs."""
    from toolchain.reference import compare, run_reference

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if "lm" in manifest and not inputs_paths:  # greedy generation, token by token
        from toolchain.lm_reference import verify_lm

        return verify_lm(out_dir, manifest, backend_for(manifest["family"]), tolerance)
    inputs = load_inputs(manifest, inputs_paths or [], seed)
    got = backend_for(manifest["family"]).run(out_dir, inputs)
    ref = run_reference(out_dir / "model.onnx", inputs)
    if len(got) != len(ref):
        raise ModelError(f"artifact gave {len(got)} outputs, onnxruntime {len(ref)}")
    tol = tolerance if tolerance is not None else float(manifest.get("tolerance", 1e-4))
    steps = manifest.get("output_steps") or {}
    return [compare(spec["name"], g, r, tol,
                    steps[spec["name"]] * 1.0001 if spec["name"] in steps else None)
            for spec, g, r in zip(manifest["outputs"], got, ref)]


def _step_allowance(allowed: float, step: float | None) -> str:
    """How the absolute allowance of an output reads: in whole steps of its quantized ONNX
    output when it is one (CPU targets allow one step, FPGA designs four), else as a number."""
    steps = allowed / 1.0001 / step if step else 0.0
    if steps >= 0.5 and abs(steps - round(steps)) < 1e-3:
        n = round(steps)
        return (f"one output step {allowed:.4g}" if n == 1
                else f"{n} output steps of {step:.4g} = {allowed:.4g}")
    return f"abs error {allowed:.4g}"


def cmd_verify(args) -> int:
    results = verify_folder(args.out_dir, args.input, args.seed, args.tolerance)
    one_step = {}
    if any(c.abs_tolerance for c in results):
        one_step = output_steps(load_model(Path(args.out_dir) / "model.onnx"))
    for c in results:
        status = "ok" if c.ok else "MISMATCH"
        print(f"{c.name}: max abs error {c.max_abs_error:.3e}, max rel error {c.max_rel_error:.3e} "
              f"(of range {c.output_range:.3g}; tolerance {c.tolerance:.1e}"
              + (f" or {_step_allowance(c.abs_tolerance, one_step.get(c.name))}"
                 if c.abs_tolerance else "")
              + f") {status}")
    if args.json:
        args.json.write_text(json.dumps([c.to_json() for c in results], indent=2) + "\n")
    raise_if_outside(results)
    return 0


def raise_if_outside(results: list) -> None:
    """VerificationError naming the outputs of ``verify_folder`` outside their tolerance."""
    bad = [c.name for c in results if not c.ok]
    if bad:
        raise VerificationError("outputs outside tolerance: " + ", ".join(bad))


# ---------------------------------------------------------------- simulate
def register_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a compiled design and report latency/resources")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--json", type=Path, help="where to write the simulation report "
                                             "(default OUT/simulation.json)")
    add_option_flags(p, "simulate")  # each family's simulate options class
    p.set_defaults(func=cmd_simulate, command_parser=p)


def simulate_folder(out_dir: Path, options=None) -> dict:
    """``edgec simulate``: the target's simulators on the folder, with ``options`` (a mapping
    or the family's ``SimulateOptions``); the compile options are the folder's own (its
    edgec.json). A simulate option of another family is an error, not ignored."""
    manifest = read_manifest(out_dir)
    dev = _folder_device(manifest)
    backend = backend_for(manifest["family"])
    if options is None or isinstance(options, Mapping):
        values = {k.replace("-", "_"): v for k, v in (options or {}).items() if v is not None}
        for name in values:
            other = option_owner(name, "simulate", dev.family)
            if other is not None:
                raise ConfigError(f"option {flag_of(name)} does not apply to {out_dir} (target "
                                  f"{dev.name}, family {backend.family}); it is an option of "
                                  f"the {other} targets' simulation")
        options = typed_options(dev, values, "simulate")
    elif type(options) is not backend.SimulateOptions:
        raise ConfigError(f"target {dev.name} (family {backend.family}) takes no "
                          f"{type(options).__name__}")
    return backend.simulate(Path(out_dir), options)


def _folder_device(manifest: dict):
    from toolchain.targets.registry import Device

    try:
        return device(manifest["target"])
    except ConfigError:  # a target this edgec does not know: its family still answers
        return Device(manifest["target"], manifest["family"], "")


def cmd_simulate(args) -> int:
    report = simulate_folder(args.out_dir, {n: getattr(args, n, None)
                                            for n in option_names("simulate")})
    dest = args.json or Path(args.out_dir) / "simulation.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(f"simulation report written to {dest}")
    return 0
