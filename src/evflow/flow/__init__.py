"""evflow.flow: nano-flow cytometry analysis.

Transforms (:mod:`.transforms`), compensation (:mod:`.compensation`), gates and
gating strategies (:mod:`.gates`), Gating-ML 2.0 (:mod:`.gatingml`),
marker-phenotype counting (:mod:`.phenotypes`), bead and scatter calibration
(:mod:`.calibration`, :mod:`.mie`) and assay controls (:mod:`.controls`).
The commonly used names are also exported from the top-level ``evflow``.
"""
