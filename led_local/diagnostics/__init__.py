"""Diagnostics: what an installation and a model file can do, checked and explained."""
