"""Evaluation: problem files, run files, answer grading, pass@k, reports and ``solve``.
Uses ``led_local.decoding``."""
