"""The paper figures from our own losses and runs: functions return numbers, drawing is separate.

- ``curves``: target-logit curves, binary decision boundaries, AM-LFS significance — computed by each loss's
  own pipeline on chosen cosines (never a re-typed formula).
- ``angles``: theta_y / nearest non-target angles, fixed-bin histograms, the trainer callback
  (``analysis.theta_every``).
- ``runs``: theta distributions of a run's checkpoints over a data set; the series the callback logged.
- ``toy``: SphereFace-style 2-D / 3-D toy features.
- ``draw``: PNG (matplotlib Agg) and CSV writers; ``report``: the demo's one-page HTML report.
``marginface plot KIND`` (``marginface/cli/analysis.py``) drives them. See docs/analysis.md.
"""
