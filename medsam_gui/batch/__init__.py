"""Cohort batches on Dask distributed: one manifest row = one scan = one case (``medsam-gui batch``).

manifest (read and validate the CSV up front), tasks (one case on a worker, models cached per
process), outputs (label map, ITK-SNAP labels, measurements, QC picture), report (report.csv,
report.html), runner (the cluster, resume, Ctrl-C), progress (the terminal bar).
"""
