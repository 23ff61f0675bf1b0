"""CLI commands. Each module has ``register(subparsers)`` functions listed in REGISTRY."""

from toolchain.commands import build, compress, doctor, flow, report

REGISTRY = [
    build.register_targets,
    compress.register_zoo,
    compress.register_compress,
    build.register_compile,
    build.register_run,
    build.register_verify,
    build.register_simulate,
    report.register_report,
    doctor.register_doctor,
    flow.register_build,
]
