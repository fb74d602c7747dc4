"""Entry point for a cluster: ``ray job submit --working-dir . -- python pipelines/compare.py --config C.yaml``.

Takes the arguments of ``boostray compare`` (see ``--help``); inside a Ray job it joins that cluster.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the uploaded working dir

from boostray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
