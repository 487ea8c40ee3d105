"""``toolkit.analyze()`` without ``out``, with the tests' tiny plugin, for tests that need a real
process (torchrun): ``python tests/tiny_api.py FEATURES.npy [CHECKPOINTS]`` runs the tiny study of
test_distributed (3 seeds) and rank 0 saves its features to ``FEATURES.npy``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from conftest import TINY_RUN, TinyPlugin  # noqa: E402

import toolkit  # noqa: E402
from toolkit.plugins import get_plugin_manager  # noqa: E402

if __name__ == "__main__":
    get_plugin_manager().register(TinyPlugin(), name="tiny-test-plugin")
    ds = toolkit.analyze(**{**TINY_RUN, "seeds": 3},
                         checkpoints=sys.argv[2] if len(sys.argv) > 2 else None)
    if ds is not None:
        np.save(sys.argv[1], ds["features"].values)
