"""Dataset conversion (``segflow.prepare``): public dataset layouts → segflow's folder layout.

* :mod:`~segflow.data.prepare.adapters`: find the (image, label[, FOV]) pairs of each
  native layout;
* :mod:`~segflow.data.prepare.layout`: validate every pair and write
  ``<dest>/{train,val,test}/{image,label[,fov]}/`` with ``manifest.json`` (:func:`prepare`,
  :func:`check`);
* :mod:`~segflow.data.prepare.ownership`: what a rebuild may replace (only files it wrote);
* :mod:`~segflow.data.prepare.fov`: field-of-view masks for datasets that ship none.

Runtime loading (datasets, the datamodule) lives in :mod:`segflow.data` and never imports this.
"""
