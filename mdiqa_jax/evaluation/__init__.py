"""Evaluation: a trained model's metrics on a dataset split, and its report files.

  evaluate.py   evaluate_checkpoint(path, split): load, score the split, report
  report.py     metrics.json / predictions.csv / scatter.png, written as one set
The metrics themselves (PLCC, SROCC, KROCC) are `mdiqa_jax.metrics`.
"""
