"""Run machinery shared by the commands (``train``, ``eval``, ``predict``, ``report``):

* :mod:`~segflow.runs.layout`: the output root, run folders claimed atomically, finding
  the runs under a folder;
* :mod:`~segflow.runs.checkpoints`: find a run's checkpoint and rebuild its model
  (:func:`~segflow.runs.checkpoints.load_model`, the one loader);
* :mod:`~segflow.runs.auto_resume`: ``resume=auto`` (config fingerprint, newest ``last.ckpt``);
* :mod:`~segflow.runs.results`: result files (prediction PNGs, CSV / Markdown, plots);
* :mod:`~segflow.runs.logs`: callbacks and loggers from their config groups, log routing.
"""
