"""ARM backend (in progress)."""
from __future__ import annotations

from toolchain.targets.registry import Backend, register_backend


@register_backend
class ArmBackend(Backend):
    family = "arm"

    def describe(self, device):
        f = device.facts
        return f"triple {f['triple']}, cpu {f['cpu']}, features {' '.join(f['features']) or '-'}"

    def compile(self, model_path, model, device, args, stage):
        raise NotImplementedError

    def run(self, out_dir, inputs):
        raise NotImplementedError
