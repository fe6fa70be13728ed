"""Hydra command-line apps: ``lightning-optim-train`` (train.py), ``lightning-optim-schedule`` (schedule.py) and
``lightning-optim-lr-find`` (lr_find.py).

The top layer: may import every other package; nothing in the package imports it.
"""
