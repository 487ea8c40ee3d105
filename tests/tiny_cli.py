"""The command line with the tests' tiny plugin registered, for tests that need a real process.

``python tests/tiny_cli.py analyze --model tiny-cnn --dataset tiny ...``. With
``TOOLKIT_TEST_PAUSE=<seconds>`` the process sleeps after each unit of work it saves, so a test can
kill it between units.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import TinyPlugin  # noqa: E402

from toolkit import workdir  # noqa: E402
from toolkit.__main__ import main  # noqa: E402
from toolkit.plugins import get_plugin_manager  # noqa: E402


def _pausing(save, seconds):
    def slowed(self, *args, **kwargs):
        save(self, *args, **kwargs)
        time.sleep(seconds)
    return slowed


if __name__ == "__main__":
    pause = float(os.environ.get("TOOLKIT_TEST_PAUSE", "0"))
    if pause:
        for name in ("save_training", "save_prototypes", "save_unit"):
            setattr(workdir.WorkDir, name, _pausing(getattr(workdir.WorkDir, name), pause))
    get_plugin_manager().register(TinyPlugin(), name="tiny-test-plugin")
    sys.exit(main(sys.argv[1:]))
