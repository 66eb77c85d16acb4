"""Operator tools around the serving stack: the `tideserve` command (cli), the local launcher
(`tideserve up`: launcher, supervision), the load generator, `top`, `report`/`record`, the capacity
planner's command (`plan`) and the model profiler (`profile`).

The services never import this package; it drives them from outside, as an operator would.
"""
