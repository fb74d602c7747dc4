"""Entry point for a cluster: ``ray job submit --working-dir . -- python pipelines/tune.py tune_configs/X.yaml``.

Takes the arguments of ``boostray tune`` (see ``--help``); inside a Ray job it joins that cluster.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the uploaded working dir

from boostray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
