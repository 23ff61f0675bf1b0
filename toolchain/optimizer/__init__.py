"""The optimizer: ONNX -> TVM Relax -> per-target pass pipeline -> kernels.

This package is the only place that imports TVM. ``frontend`` imports a model, ``pipeline``
holds the named pass pipelines, ``schedule`` gives the kernels a CPU schedule, ``plan`` turns
the optimized Relax ``main`` into a flat list of kernel calls, and ``memplan`` (pure Python)
assigns activation buffers to a static arena.
"""
