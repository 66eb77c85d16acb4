"""The learned scaling policy: what the live scaler runs, and the offline tools that make it.

Run by the live scaler (numpy only; no torch, stable-baselines3 or gymnasium):
  fallback     LearnedWithFallback, the registry's `learned` policy: the trained policy with a rule
               policy deciding wherever it is not trusted
  policy       LearnedPolicy: ScalingContext -> observation -> actor -> replica count
  observation  the features, shared with the simulator
  actions      what each action means, shared with the simulator
  inference    the trained actor's deterministic action in numpy, read from <name>.npz

Offline (stable-baselines3, torch, gymnasium; the simulator is services.scaler.sim):
  train        `tideserve policy train`: PPO in the simulator; writes <name>.zip (the
               stable-baselines3 policy), <name>.npz (its actor, exported) and <name>.json (how
               it was trained)
  evaluate     `tideserve policy eval`: the learned policy against tuned rule policies
  export       `tideserve policy export [POLICY.zip]`: <name>.npz from <name>.zip

The shipped policy is default_policy.zip/.json with default_policy.npz exported from that .zip by
`tideserve policy export` (no argument: the shipped policy). A policy file without its .npz still
loads where stable-baselines3 is installed (it is exported on load); elsewhere the scaler runs the
fallback rule and says why in GetStatus.fallback_reason.
"""

from pathlib import Path

DEFAULT_POLICY = Path(__file__).parent / "default_policy.zip"
