"""Entry point for a cluster: ``ray job submit --working-dir . -- python pipelines/train.py [options]``.

Takes exactly the options of ``boostray train`` (see ``--help``). Inside a Ray job RAY_ADDRESS is set,
so the run joins that cluster instead of starting a local Ray.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the uploaded working dir

from boostray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
