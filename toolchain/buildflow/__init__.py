"""``edgec build``: one build from one TOML file, as a list of named, cached steps.

The steps, in order (``STEP_NAMES``): load, compress, export, compile (per target: optimize,
emit and link through ``edgec compile``), verify (per target), simulate (targets that
simulate: FPGA), report. Each writes its artifact and a ``step.json`` (seconds, its inputs'
content hashes, its cache key, whether it was served from the cache) into ``OUT/<step>/`` or
``OUT/<target>/<step>/``; the validated config is saved as ``OUT/build.json``.

Python API::

    from toolchain.buildflow import load_config, run_build
    cfg = load_config("examples/edgec.toml")
    run_build(cfg, "out/", start="compile", stop="verify")

Config: ``config.py``; steps: ``steps.py``; cache: ``cache.py``; planning and running:
``runner.py``.
"""

from toolchain.buildflow.config import (BuildConfig, ModelSource, TargetConfig, from_table,
                                        load_config)
from toolchain.buildflow.runner import BUILD_JSON, STEP_NAMES, StepResult, plan, run_build

__all__ = ["BUILD_JSON", "BuildConfig", "ModelSource", "STEP_NAMES", "StepResult",
           "TargetConfig", "from_table", "load_config", "plan", "run_build"]
