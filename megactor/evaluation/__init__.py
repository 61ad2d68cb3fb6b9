"""Scoring generated portrait videos against their drivers (``evaluate.py``): weight-free face, sync, drift and
pixel metrics, and the weight metrics (SyncNet, FID, FVD, CSIM) whose weights are given."""
