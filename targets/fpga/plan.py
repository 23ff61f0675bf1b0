"""Decide the design: a fixed-point type for every tensor and a reuse factor for every layer.

Before: a LayerGraph (float weights, QDQ grids where the model was quantized) and a FpgaConfig.
After: a Design whose layers carry input/weight/bias/accumulator/result types and reuse factors.
Quantized grids become exact types; accumulators are sized so they can neither overflow nor
round; results round to nearest and saturate; zero weights stay zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolchain.errors import ConfigError

from .config import FpgaConfig
from .lower import WEIGHTED_KINDS, Layer, LayerGraph
from .precision import Fixed, accumulator, fit_values, integer_bits_for


@dataclass
class PlannedLayer:
    layer: Layer
    input_type: Fixed
    result_type: Fixed
    weight_type: Fixed | None = None
    bias_type: Fixed | None = None
    accum_type: Fixed | None = None
    reuse_factor: int = 1

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def has_weights(self) -> bool:
        return self.layer.kind in WEIGHTED_KINDS

    def quantized_weight(self) -> np.ndarray:
        return self.weight_type.cast(self.layer.weight)

    def quantized_bias(self) -> np.ndarray:
        if self.layer.bias is None:
            return np.zeros(self.layer.n_out)
        return self.bias_type.cast(self.layer.bias)

    def to_json(self) -> dict:
        d = {"name": self.name, "kind": self.layer.kind, "onnx_node": self.layer.node,
             "input": self.input_type.hls(), "result": self.result_type.hls()}
        if self.has_weights:
            d.update(weight=self.weight_type.hls(), bias=self.bias_type.hls(),
                     accum=self.accum_type.hls(), reuse_factor=self.reuse_factor,
                     n_in=self.layer.fan_in, n_out=self.layer.n_out,
                     zero_weights=int(np.sum(self.quantized_weight() == 0)),
                     weights=int(self.layer.weight.size))
        return d


@dataclass
class Design:
    graph: LayerGraph
    input_type: Fixed
    layers: list[PlannedLayer]

    def weighted(self) -> list[PlannedLayer]:
        return [p for p in self.layers if p.has_weights]

    def layer(self, name: str) -> PlannedLayer:
        for p in self.layers:
            if p.name == name:
                return p
        raise KeyError(name)


def assign_types(graph: LayerGraph, cfg: FpgaConfig) -> Design:
    """Give every tensor a type (see module docstring)."""
    default = cfg.default_precision
    _move_quantizers_before_flatten(graph.layers)
    quantized = graph.input_type is not None or any(l.out_type for l in graph.layers)
    types: dict[str, Fixed] = {"": graph.input_type or default}  # layer name -> result type
    planned: list[PlannedLayer] = []
    for i, layer in enumerate(graph.layers):
        kind = layer.kind
        x = types[layer.inputs[0]]
        # In a QDQ model, values stay exact until the next quantizer rounds them, once, as
        # onnxruntime does; float models round every result to the default precision.
        exact = layer.out_type is None and quantized and _quantizer_follows(graph.layers, i)
        if kind in WEIGHTED_KINDS:
            w_t = layer.weight_type or fit_values(layer.weight, default.width)
            if layer.bias is None:
                b_t = Fixed(2, 1)
            elif layer.bias_type is not None:
                b_t = layer.bias_type
            else:  # on the accumulator's grid, so adding it rounds nothing more
                integer = integer_bits_for(float(np.abs(layer.bias).max()))
                b_t = Fixed(max(integer + x.frac + w_t.frac, 2), integer)
            acc = accumulator(x, w_t, b_t, layer.weight, layer.bias)
            out = layer.out_type or (acc if exact else default)
            planned.append(PlannedLayer(layer, x, out, w_t, b_t, acc))
        elif kind == "relu":  # without a quantizer: the non-negative part, exactly
            out = layer.out_type or Fixed(max(x.width - 1, 1), max(x.integer - 1, 0), False)
            planned.append(PlannedLayer(layer, x, out))
        elif kind in ("relu6", "relu1"):  # [0, 6] needs 3 integer bits, [0, 1] one
            top = 3 if kind == "relu6" else 1
            integer = min(max(x.integer - 1, 0), top) if x.signed else min(x.integer, top)
            out = layer.out_type or Fixed(max(integer + x.frac, 1), integer, False)
            planned.append(PlannedLayer(layer, x, out))
        elif kind in ("add", "concat"):
            ins = [types[n] for n in layer.inputs]
            union = _union(ins, grow=1 if kind == "add" else 0)
            # a concat passes values through; a sum rounds like a dense layer's result
            out = layer.out_type or (union if exact or kind == "concat" else default)
            planned.append(PlannedLayer(layer, union, out))
        elif kind == "softmax":
            out = layer.out_type or Fixed(default.width, 1, False)
            planned.append(PlannedLayer(layer, x, out))
        elif kind == "avgpool2d":
            # hls4ml sums then divides in the accumulator: log2(window) more integer bits for
            # the sum and as many more fractional bits keep a power-of-two mean exact
            grow = math.ceil(math.log2(int(np.prod(layer.attrs["kernel"]))))
            acc = Fixed(x.width + 2 * grow, x.integer + grow, x.signed)
            out = layer.out_type or (Fixed(x.width + grow, x.integer, x.signed) if exact else x)
            planned.append(PlannedLayer(layer, x, out, accum_type=acc))
        else:  # flatten, maxpool2d: values pass through unchanged
            planned.append(PlannedLayer(layer, x, layer.out_type or x))
        types[layer.name] = planned[-1].result_type
    return Design(graph, graph.input_type or default, planned)


def _union(types: list[Fixed], grow: int) -> Fixed:
    """A type holding every value of ``types`` exactly (``grow`` more integer bits: a sum)."""
    signed = any(t.signed for t in types)
    # an unsigned type needs one more integer bit beside a signed one
    integer = max(t.integer + (1 if signed and not t.signed else 0) for t in types) + grow
    frac = max(t.frac for t in types)
    return Fixed(integer + frac, integer, signed)


_VALUE_PRESERVING = ("relu", "relu6", "relu1", "maxpool2d", "avgpool2d", "flatten")


def _quantizer_follows(layers: list[Layer], i: int) -> bool:
    """Whether a Q/DQ grid comes after layer i with only ReLU/pooling/flatten in between (and
    no branch: every layer on the way has one reader)."""
    name = layers[i].name
    while True:
        readers = [l for l in layers if name in l.inputs]
        if len(readers) != 1 or readers[0].kind not in _VALUE_PRESERVING:
            return False
        if readers[0].out_type is not None:
            return True
        name = readers[0].name


def _move_quantizers_before_flatten(layers: list[Layer]) -> None:
    """hls4ml's Flatten casts nothing, so a grid after it goes to the layer before it."""
    by_name = {l.name: l for l in layers}
    for layer in layers:
        if layer.kind == "flatten" and layer.out_type is not None and layer.inputs[0]:
            prev = by_name[layer.inputs[0]]
            if prev.out_type is None or prev.out_type == layer.out_type:
                prev.out_type, layer.out_type = layer.out_type, None


def valid_reuse_factors(n_in: int, n_out: int) -> list[int]:
    """hls4ml's rule (FACTS.md): (n_in*n_out) % RF == 0 and (RF < n_in or RF % n_in == 0)."""
    total = n_in * n_out
    return [rf for rf in range(1, total + 1)
            if total % rf == 0 and (rf < n_in or rf % n_in == 0)]


def _aliases(p: PlannedLayer) -> set[str]:
    """Names a layer answers to: edgec's, the ONNX node's and the PyTorch module's."""
    names = {p.name, *p.layer.node.split("+")}
    if p.layer.attrs.get("module"):
        names.add(p.layer.attrs["module"])
    return names


def apply_reuse_factors(design: Design, cfg: FpgaConfig) -> None:
    """Set the reuse factors given with --reuse-factor; an invalid one is a ConfigError."""
    for key in cfg.reuse_per_layer:
        if not any(key in _aliases(p) for p in design.weighted()):
            raise ConfigError(f"invalid --reuse-factor {key}=...: no layer '{key}'; layers "
                              "with weights: " + ", ".join(p.name for p in design.weighted()))
    for p in design.weighted():
        given = [rf for key, rf in cfg.reuse_per_layer.items() if key in _aliases(p)]
        rf = given[-1] if given else cfg.reuse_default
        valid = valid_reuse_factors(p.layer.fan_in, p.layer.n_out)
        if rf not in valid:
            near = sorted(valid, key=lambda v: (abs(v - rf), v))[:6]
            raise ConfigError(f"invalid --reuse-factor {rf} for layer '{p.name}' "
                              f"({p.layer.fan_in}x{p.layer.n_out}): valid values near it are "
                              + ", ".join(map(str, sorted(near))))
        p.reuse_factor = rf
