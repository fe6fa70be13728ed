"""Hydra command-line apps: ``lightning-optim-train`` (train.py) and ``lightning-optim-schedule`` (schedule.py)."""
