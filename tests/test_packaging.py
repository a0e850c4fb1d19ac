"""`pip install .` builds a pure wheel and `import jitkern` needs no vendor bindings."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pure_wheel_installs_and_imports_without_backends(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheels = list((tmp_path / "dist").glob("jitkern-*.whl"))
    assert len(wheels) == 1 and wheels[0].name.endswith("-py3-none-any.whl"), wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "jitkern/templates/prelude.h.j2" in names and "engine_patch/vllm.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c", ".cpp"))]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])], check=True)
    code = ("import sys; sys.modules['hip'] = None; sys.modules['cuda'] = None\n"
            "import jitkern, jitkern.render as r\n"
            "assert 'site-packages' in jitkern.__file__, jitkern.__file__\n"
            "print(r.templates_dir())")
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.strip().endswith("jitkern/templates")
