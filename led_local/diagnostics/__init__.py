"""Diagnostics: what an installation and a model file can do, checked and explained
(``doctor``), and what LED sees and changes on a model, position by position (``inspect``)."""
