"""The method: the boosting step, the method presets and schedules, the combination of members, one rank's run (engine), its state and the collectives between ranks. PyTorch and NumPy only."""
