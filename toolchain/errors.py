"""User-facing errors.

Every error a user can cause (a bad file, a bad option, a missing tool) is an ``EdgecError``
with a message they can act on. The CLI prints it as one line and exits with ``exit_code``;
anything else is a bug and keeps its traceback.
"""


class EdgecError(Exception):
    """An error the user can fix; printed as one line by the CLI."""

    exit_code = 2


class ModelError(EdgecError):
    """The model file is missing, not ONNX, truncated or invalid."""


class UnsupportedOpError(ModelError):
    """A node uses an operator the chosen target cannot compile."""

    def __init__(self, op_type: str, node_name: str, target: str, detail: str = ""):
        self.op_type = op_type
        self.node_name = node_name
        self.target = target
        self.detail = detail
        msg = f"unsupported op '{op_type}' in node '{node_name}' for target '{target}'"
        super().__init__(msg + (f": {detail}" if detail else ""))


class DynamicShapeError(ModelError):
    """An input has a symbolic or unknown dimension and no --input-shape fixes it."""


class ConfigError(EdgecError):
    """A bad option or config-file value."""


class ToolMissingError(EdgecError):
    """An external program (cross compiler, qemu, simulator) is not installed."""

    exit_code = 3


class ToolFailedError(EdgecError):
    """An external program ran and failed."""

    exit_code = 4


class VerificationError(EdgecError):
    """Outputs differ from the reference by more than the tolerance."""

    exit_code = 1
