"""Offline evaluation: accuracy, threshold and NIST rates, calibration, fairness, report, release gate.

Pure functions over numpy arrays of true ages and predicted (mean, std), so the same code scores a
checkpoint, a recorded replay, or a hand-written array in a test. Never imports `stream`; matplotlib
is imported only where a plot is drawn.
"""

from model.evaluation.metrics import Estimates

__all__ = ["Estimates"]
