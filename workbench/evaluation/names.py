"""The one table of metric names (no torch here: tables, reports and figures read it cheaply)."""

#: every run's scalar metrics (fractions in [0, 1]) with their titles in tables and figures (mAP* = mAP_devkit,
#: the Market devkit's AP as MAR's official code computes it)
METRIC_TITLES = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10", "mAP": "mAP", "mAP_devkit": "mAP*",
                 "mINP": "mINP"}
#: their keys, in table order
METRIC_KEYS = tuple(METRIC_TITLES)
