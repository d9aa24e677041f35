"""The one table of metric names (no torch here: tables, reports and figures read it cheaply)."""

#: every run's scalar metrics (fractions in [0, 1]) with their titles in tables and figures (mAP* = mAP_devkit,
#: the Market devkit's AP as MAR's official code computes it)
METRIC_TITLES = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10", "mAP": "mAP", "mAP_devkit": "mAP*",
                 "mINP": "mINP"}
#: their keys, in table order
METRIC_KEYS = tuple(METRIC_TITLES)

#: what every stage-2 method logs per epoch about the pairs that supervise it (read from the hidden labels, as
#: diagnostics only): the share of its positive pairs that are cross-camera, their precision, and the recall of
#: same-identity pairs within one camera and across two (workbench.clustering.camera_ratios)
CAMERA_TITLES = {"cross_share": "cross-camera among + (%)", "cross_precision": "true among cross-camera + (%)",
                 "recall_same_cam": "same-id pairs found, one camera (%)",
                 "recall_cross_cam": "same-id pairs found, two cameras (%)"}
CAMERA_COLUMNS = tuple(CAMERA_TITLES)
