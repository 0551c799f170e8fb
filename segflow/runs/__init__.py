"""Run machinery shared by the entry points (``train``, ``eval``, ``predict``, ``report``):

* :mod:`~segflow.runs.checkpoints`: find a run's checkpoint and rebuild its model;
* :mod:`~segflow.runs.auto_resume`: ``resume=auto`` (config fingerprint, newest ``last.ckpt``);
* :mod:`~segflow.runs.results`: result files (prediction PNGs, CSV / Markdown, JSON, plots);
* :mod:`~segflow.runs.logs`: callbacks and loggers from their config groups, log routing.
"""
