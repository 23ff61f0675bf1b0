"""CLI commands. Each module has ``register(subparsers)`` functions listed in REGISTRY."""

from toolchain.commands import build, check, compress, doctor, flow, report

REGISTRY = [
    build.register_targets,
    compress.register_zoo,
    compress.register_compress,
    check.register_check,
    build.register_compile,
    build.register_run,
    build.register_verify,
    build.register_simulate,
    report.register_report,
    doctor.register_doctor,
    flow.register_build,
]
