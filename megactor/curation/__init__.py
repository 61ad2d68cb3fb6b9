"""Curation: videos -> filtered webdataset shards of talking-head clips, with a metrics table and report.

Sits above ``data/`` and ``metrics/`` (it uses both); ``data_processing/`` holds its entry points.
"""
