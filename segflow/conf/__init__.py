"""Hydra configs of segflow (a package so that Hydra finds them as pkg://segflow.conf when
segflow is installed; the YAML files are package data)."""
