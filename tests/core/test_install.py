"""scripts/install.py, which `make` installs with: uv configured as pip is, else pip."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install.py"
install = load_script(SCRIPT)


def test_pip_install_reads_its_own_section_over_global_and_the_environment_over_both():
    listing = "\n".join([
        ":env:.find-links='/env/wheels'",
        "global.extra-index-url='file:///a/simple file:///b/simple'",
        "global.find-links='/global/wheels'",
        "global.index-url='https://mirror/simple'",
        "install.index-url='https://install-mirror/simple'",
        "download.only-binary=':all:'",  # another command's section: not pip install's
        r"global.constraint='\n/etc/caps.txt\n/etc/more-caps.txt'",  # written over three lines
        "",
    ])
    assert install.pip_settings(listing) == {
        "constraint": "\n/etc/caps.txt\n/etc/more-caps.txt",
        "extra-index-url": "file:///a/simple file:///b/simple",
        "find-links": "/env/wheels",
        "index-url": "https://install-mirror/simple",
    }


def test_uv_is_given_every_setting_that_changes_what_pip_would_install():
    flags, environment = install.uv_equivalent({
        "extra-index-url": "file:///a/simple file:///b/simple",
        "find-links": "/opt/wheels",
        "constraint": "/etc/caps.txt",
        "index-url": "https://mirror/simple",
        "no-index": "false",
        "cert": "/etc/ssl/bundle.crt",
        "default-timeout": "180",
        "disable-pip-version-check": "1",
        "config-file": "/etc/my-pip.conf",  # where pip read the others from
    })
    assert flags == ["--index-strategy", "unsafe-best-match", "--compile-bytecode",
                     "--constraints", "/etc/caps.txt", "--extra-index-url", "file:///a/simple",
                     "--extra-index-url", "file:///b/simple",
                     "--find-links", "/opt/wheels", "--index-url", "https://mirror/simple"]
    assert environment["SSL_CERT_FILE"] == os.environ.get("SSL_CERT_FILE", "/etc/ssl/bundle.crt")
    assert "--compile-bytecode" not in install.uv_equivalent({"no-compile": "yes"})[0]
    assert "--no-index" in install.uv_equivalent({"no-index": "1"})[0]
    over_lines = install.uv_equivalent({"constraint": "\n/etc/caps.txt\n/etc/more-caps.txt"})[0]
    assert over_lines[3:] == ["--constraints", "/etc/caps.txt",
                              "--constraints", "/etc/more-caps.txt"]


def test_a_pip_setting_uv_has_no_equivalent_for_is_named():
    assert install.uv_equivalent({"prefer-binary": "1"}) == (
        "pip's setting 'prefer-binary' has no uv equivalent here")


def _wheel(folder: Path) -> Path:
    """A one-module wheel, built by hand so that nothing needs a build backend or an index."""
    path = folder / "tinypkg-1.0-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": "ANSWER = 42\n",
        "tinypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = "".join(f"{name},,\n" for name in [*files, "tinypkg-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in {**files, "tinypkg-1.0.dist-info/RECORD": record}.items():
            archive.writestr(name, text)
    return path


def _install_into_a_fresh_environment(tmp_path, **environment) -> tuple[Path, str]:
    venv.create(tmp_path / "env", with_pip=False)
    python = tmp_path / "env" / "bin" / "python"
    done = subprocess.run([sys.executable, str(SCRIPT), "--python", str(python), "--no-index",
                           str(_wheel(tmp_path))], capture_output=True, text=True,
                          env={**os.environ, **environment})
    assert done.returncode == 0, done.stderr
    (installed,) = (tmp_path / "env").glob("lib/python*/site-packages/tinypkg-1.0.dist-info")
    imported = subprocess.run([str(python), "-c", "import tinypkg; print(tinypkg.ANSWER)"],
                              capture_output=True, text=True, check=True).stdout
    assert imported == "42\n"
    return installed, done.stderr


@pytest.mark.skipif(importlib.util.find_spec("uv") is None, reason="uv is not installed here")
def test_uv_installs_and_byte_compiles_as_pip_would(tmp_path):
    installed, messages = _install_into_a_fresh_environment(tmp_path)
    assert (installed / "INSTALLER").read_text().strip() == "uv"
    assert list((installed.parent / "tinypkg" / "__pycache__").glob("__init__.*.pyc"))
    assert "installing with pip" not in messages


def test_pip_installs_when_asked_or_when_pip_is_set_up_in_a_way_uv_cannot_match(tmp_path):
    installed, messages = _install_into_a_fresh_environment(tmp_path / "asked",
                                                            TOOLKIT_INSTALLER="pip")
    assert (installed / "INSTALLER").read_text().strip() == "pip"
    assert "installing with pip (TOOLKIT_INSTALLER=pip)" in messages

    installed, messages = _install_into_a_fresh_environment(tmp_path / "set-up",
                                                            PIP_PREFER_BINARY="1")
    assert (installed / "INSTALLER").read_text().strip() == "pip"
    assert "pip's setting 'prefer-binary' has no uv equivalent here" in messages
