"""Install packages into a Python environment with uv, configured as pip is, or else with pip.

``make`` installs the toolkit with ``.venv/bin/python scripts/install.py -e .``: the arguments are
``pip install``'s, into the running interpreter's environment or, after ``--python PATH``, that
interpreter's. The toolkit pulls in some 6 GB of packages (the CUDA build of torch among them),
and pip unpacks and byte-compiles them on one core: 112 s on the reference machine, against 61 s
for uv doing the same on both (medians of three alternating runs; docs/performance.md,
"Installing").

uv does not read pip's configuration, and a machine's pip may be set up to use a mirror, a
directory of wheels or version caps. So this script reads pip's own view of it (``pip config
list``: its files and ``PIP_*`` variables) and hands uv each setting it has an equivalent for,
resolving as pip does across indexes (``--index-strategy unsafe-best-match``). It installs with
pip instead, saying why, where that cannot be done faithfully: a pip setting with no uv
equivalent, uv not installable, or uv failing. ``TOOLKIT_INSTALLER=pip`` always uses pip.

uv itself is installed by pip into the environment that runs this script, the first time.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys

# pip settings (as `pip config list` names them) that change what is installed or from where,
# with uv's flag for each; values of "many" settings are whitespace-separated lists.
_ONE = {"index-url": "--index-url"}
_MANY = {"extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraints", "trusted-host": "--allow-insecure-host"}
_SWITCHES = {"no-index": "--no-index", "pre": "--prerelease=allow",
             "no-build-isolation": "--no-build-isolation"}
# Settings uv reads from the environment under another name.
_ENVIRONMENT = {"cert": ("SSL_CERT_FILE",), "client-cert": ("SSL_CLIENT_CERT",),
                "proxy": ("HTTPS_PROXY", "HTTP_PROXY")}
# Settings that change how pip talks or reports, not what it installs.
_IGNORED = {"cache-dir", "config-file", "default-timeout", "disable-pip-version-check",
            "isolated", "log", "no-cache-dir", "no-color", "no-input", "no-python-version-warning",
            "no-warn-conflicts", "no-warn-script-location", "progress-bar", "quiet", "retries",
            "root-user-action", "timeout", "verbose", "break-system-packages"}
# The sections `pip install` reads, each overriding the one before.
_SECTIONS = ("global", "install", ":env:")


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _unquoted(value: str) -> str:
    """A value as `pip config list` prints it (Python's repr: a list written over several lines
    of a config file keeps its newlines as ``\\n``)."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value.strip()
    return parsed if isinstance(parsed, str) else value.strip()


def pip_settings(listing: str) -> dict[str, str]:
    """The settings ``pip install`` runs with, from the output of ``pip config list``."""
    found: dict[str, dict[str, str]] = {section: {} for section in _SECTIONS}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if section in found and value:
            found[section][key] = _unquoted(value)
    settings: dict[str, str] = {}
    for section in _SECTIONS:
        settings.update(found[section])
    return settings


def uv_equivalent(settings: dict[str, str]) -> tuple[list[str], dict[str, str]] | str:
    """uv's flags and environment for pip's ``settings``, or why uv cannot match them."""
    flags = ["--index-strategy", "unsafe-best-match"]
    environment: dict[str, str] = {}
    if not _truthy(settings.get("no-compile", "0")):
        flags.append("--compile-bytecode")
    for key, value in sorted(settings.items()):
        if key in _ONE:
            flags += [_ONE[key], value]
        elif key in _MANY:
            for item in value.split():
                flags += [_MANY[key], item]
        elif key in _SWITCHES:
            if _truthy(value):
                flags.append(_SWITCHES[key])
        elif key in _ENVIRONMENT:
            for variable in _ENVIRONMENT[key]:
                environment.setdefault(variable, os.environ.get(variable, value))
        elif key not in _IGNORED and key != "no-compile":
            return f"pip's setting {key!r} has no uv equivalent here"
    return flags, environment


def _run(command: list[str], environment: dict[str, str] | None = None) -> int:
    return subprocess.call(command, env={**os.environ, **(environment or {})})


def _pip_install(arguments: list[str], python: str = sys.executable) -> int:
    target = [] if python == sys.executable else ["--python", python]
    return _run([sys.executable, "-m", "pip", *target, "install", "--quiet",
                 "--disable-pip-version-check", *arguments])


def _pip(python: str, arguments: list[str], reason: str) -> int:
    print(f"install.py: installing with pip ({reason})", file=sys.stderr)
    return _pip_install(arguments, python)


def main(arguments: list[str]) -> int:
    python = sys.executable
    if arguments[:1] == ["--python"]:
        python, arguments = arguments[1], arguments[2:]
    if os.environ.get("TOOLKIT_INSTALLER", "uv") == "pip":
        return _pip(python, arguments, "TOOLKIT_INSTALLER=pip")
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], check=True,
                             capture_output=True, text=True).stdout
    equivalent = uv_equivalent(pip_settings(listing))
    if isinstance(equivalent, str):
        return _pip(python, arguments, equivalent)
    flags, environment = equivalent
    if importlib.util.find_spec("uv") is None and _pip_install(["uv"]) != 0:
        return _pip(python, arguments, "uv could not be installed")
    command = [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", python,
               *flags, *arguments]
    if _run(command, environment) != 0:
        return _pip(python, arguments, "uv failed, see above")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
