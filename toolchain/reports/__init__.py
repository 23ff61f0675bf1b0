"""Reports: the versioned schema of report.json / simulation.json / verify.json (``schema``),
the checks against stored baselines (``baseline``), and the HTML page rendered from the JSON
(``html``, with ``plots`` drawn by matplotlib)."""

from .folder import Folder, load_folder
from .schema import SCHEMA_VERSION, SchemaError, load_report, load_simulation, load_verification

__all__ = ["Folder", "SCHEMA_VERSION", "SchemaError", "load_folder", "load_report",
           "load_simulation", "load_verification"]
