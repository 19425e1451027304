"""A non-editable install works: the wheel carries the configs and the report templates, and the installed
package finds them from any working directory."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_configs_and_templates_and_an_install_uses_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, timeout=300, capture_output=True)
    wheel = next((tmp_path / "dist").glob("lwtakit-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lwtakit/configs/experiment/default.yaml" in names
    assert "lwtakit/report/templates/dissect.html" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a wheel is its install tree
    code = ("import lwtakit.config as c; cfg = c.load_config('default_dense'); "
            f"assert c.CONFIG_DIR.is_relative_to({str(target)!r}), c.CONFIG_DIR; print(cfg.model.act)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "relu"
