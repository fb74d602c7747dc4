"""Everything without Ray, in four concerns (PyTorch and NumPy alone):

- ``method/``: the boosting step, the method presets and schedules, the combination of members, one rank's
  run (``engine.py``), the recipe a user may bring (``recipe.py``);
- ``data/``: data sets in memory (``datasets.py``: images and features), decoding, streamed splits, batches;
- ``models/``: the built-in networks and the call that builds any model (``registry.py``): where a user's
  model plugs in;
- ``artifact/``: the ensemble and its loader, serving inference, export, checkpoints, the run directory,
  storage.
"""
