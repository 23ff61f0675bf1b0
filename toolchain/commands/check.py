"""edgec check: which nodes of a model each target takes, before any slow step.

Each target's backend answers ``Backend.support`` (partitioner-style, as ExecuTorch's
partitioner or ONNX Runtime's GetCapability): every node, supported or not and why. Nothing
is compiled or written; ``edgec compile`` asks the same question first and stops at the
first refused node.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from toolchain.errors import ConfigError, ModelError
from toolchain.onnx_io import fix_input_shapes, load_model, load_model_upgraded, parse_input_shapes
from toolchain.targets import backend_for, device


def register_check(sub) -> None:
    p = sub.add_parser(
        "check", help="list which nodes of a model each target takes, and why not",
        description="Ask each --target's backend which nodes of MODEL it takes (no compile, "
                    "nothing written): the supported nodes counted by op, each unsupported "
                    "node with its reason. Exit code 0 when every target takes every node, "
                    "1 when a target refuses something.")
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="the ONNX model (or a torch.save'd module, with --input-shape)")
    p.add_argument("-t", "--target", action="append", required=True, metavar="TARGET",
                   help="target name (see 'edgec targets'); repeat for several")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D1,D2,...",
                   help="static shape for a dynamic input (repeat per input), as for compile")
    p.add_argument("--module-path", action="append", default=[], metavar="DIR",
                   help="folder with the source a pickled .pt module needs (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_check, command_parser=p)


def check_model(model, targets: list[str]) -> list[dict]:
    """Per target: its family, whether it takes everything, and each node's answer."""
    results = []
    for name in targets:
        dev = device(name)
        try:
            found = backend_for(dev.family).support(model, dev)
            problem = None
        except ModelError as exc:  # the model cannot even be judged (a pass refused it)
            found, problem = [], str(exc)
        nodes = [s for s in found if s.index >= 0]
        refused = [s for s in nodes if not s.supported]
        graph = [s.reason if not s.op else f"{s.op} '{s.node}': {s.reason}"
                 for s in found if s.index < 0 and not s.supported]
        graph += [problem] if problem else []
        results.append({
            "target": dev.name, "family": dev.family, "ok": not refused and not graph,
            "nodes": len(nodes), "supported": len(nodes) - len(refused),
            "supported_ops": dict(sorted(Counter(s.op for s in nodes if s.supported).items())),
            "unsupported": [s.to_json() for s in refused],
            "graph": graph,
            "all": [s.to_json() for s in found],
        })
    return results


def load(path: Path, input_shape: list[str], module_paths=()):
    """The model as ``edgec compile`` takes it: checked, static input shapes (``input_shape``
    as ``NAME=D1,...`` strings); a PyTorch module is exported to ONNX in a temporary folder."""
    from toolchain.commands.build import _refuse_contradicting_shapes
    from toolchain.torch_input import (export_module, input_shape_for, is_torch_file,
                                       load_module)

    shapes = parse_input_shapes(input_shape)
    path = Path(path)
    if is_torch_file(path):
        module = load_module(path, module_paths=list(module_paths))
        input_name, input_shape = input_shape_for(shapes, path.name)
        with tempfile.TemporaryDirectory(prefix="edgec-check-") as tmp:
            export_module(module, Path(tmp) / "model.onnx", input_shape, input_name)
            return fix_input_shapes(load_model(Path(tmp) / "model.onnx"), {})
    loaded, _ = load_model_upgraded(path)
    _refuse_contradicting_shapes(loaded, shapes)
    return fix_input_shapes(loaded, shapes)


def cmd_check(args) -> int:
    if len(set(args.target)) != len(args.target):
        raise ConfigError("a --target is given twice")
    for name in args.target:
        device(name)  # an unknown name fails before the model is read
    args.result = check_result(load(args.model, args.input_shape, args.module_path),
                               args.target, str(args.model))
    ok = args.result["ok"]
    results = args.result["targets"]
    if args.json:
        print(json.dumps(args.result, indent=2))
    else:
        for line in table_lines(results):
            print(line)
    return 0 if ok else 1


def check_result(model, targets: list[str], name: str) -> dict:
    """What ``edgec check --json`` prints: the model's name, ``ok``, and per target its answer."""
    results = check_model(model, targets)
    return {"model": name, "ok": all(r["ok"] for r in results), "targets": results}


def table_lines(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        refused = r["nodes"] - r["supported"]
        verdict = (f"all {r['nodes']} nodes supported" if not refused
                   else f"{refused} of {r['nodes']} nodes unsupported")
        if r["graph"] and not refused:
            verdict += "; the graph is not"
        lines.append(f"{r['target']} ({r['family']}): {verdict}")
        if r["supported_ops"]:
            lines.append("  supported: " + ", ".join(f"{op} {n}"
                                                     for op, n in r["supported_ops"].items()))
        if r["unsupported"]:
            width = max(len(s["node"]) for s in r["unsupported"])
            ops = max(len(s["op"]) for s in r["unsupported"])
            lines.append("  unsupported:")
            lines += [f"    {s['node']:<{width}}  {s['op']:<{ops}}  {s['reason']}"
                      for s in r["unsupported"]]
        lines += [f"  graph: {g}" for g in r["graph"]]
    return lines
