"""core/ is the Qt- and napari-free library (DESIGN.md): importing all of it loads no GUI package."""

from __future__ import annotations

import subprocess
import sys

GUI_PACKAGES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui", "vispy", "pyqtgraph")


def test_importing_every_core_module_loads_no_gui_package() -> None:
    code = f"""
import importlib, pkgutil, sys
import napari_regcon.core as core
for info in pkgutil.walk_packages(core.__path__, "napari_regcon.core."):
    importlib.import_module(info.name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({GUI_PACKAGES!r}))
print(",".join(loaded))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "", f"core imports GUI packages: {r.stdout.strip()}"
