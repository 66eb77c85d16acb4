"""The learned scaling policy: what the live scaler runs.

Run by the live scaler (numpy only; no torch, stable-baselines3 or gymnasium):
  fallback     LearnedWithFallback, the registry's `learned` policy: the trained policy with a rule
               policy deciding wherever it is not trusted
  policy       LearnedPolicy: ScalingContext -> observation -> actor -> replica count
  observation  the features, shared with the simulator
  actions      what each action means, shared with the simulator
  inference    the trained actor's deterministic action in numpy, read from <name>.npz

The offline tools that make a policy (train, evaluate, export, and the simulator) are the
tideserve_learning package, which needs torch, stable-baselines3 and gymnasium; nothing here
imports it.

The shipped policy is default_policy.zip/.json with default_policy.npz exported from that .zip by
`tideserve policy export` (no argument: the shipped policy). A policy file whose .npz is missing or
stale is refused: the scaler runs the fallback rule and says why in GetStatus.fallback_reason.
"""

from pathlib import Path

DEFAULT_POLICY = Path(__file__).parent / "default_policy.zip"
