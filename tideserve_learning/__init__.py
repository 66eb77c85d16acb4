"""Offline training of the scaler's learned policy: the simulator (sim), PPO training (train), the
comparison against rule policies (evaluate) and the export of a trained actor to the numpy file
the scaler runs (export). Needs the `learning` extra (stable-baselines3, gymnasium, torch).

The running scaler never imports this package: it reads only the exported .npz and the policy
record (services.scaler.learning).
"""
