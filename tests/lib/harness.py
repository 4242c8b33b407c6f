"""The service harness (tests/faults/conftest.py) for the other black-box suites: loaded once as the
module `faults_harness`, its public names bound in a suite's conftest namespace (pytest finds fixtures
only there). Names the suite's conftest defines itself win."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def export_faults_harness(namespace: dict) -> ModuleType:
    module = sys.modules.get("faults_harness")
    if module is None:
        path = Path(__file__).resolve().parent.parent / "faults" / "conftest.py"
        spec = importlib.util.spec_from_file_location("faults_harness", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["faults_harness"] = module
        spec.loader.exec_module(module)
    for name in dir(module):
        if not name.startswith("_") and name != "annotations":
            namespace.setdefault(name, getattr(module, name))
    return module
