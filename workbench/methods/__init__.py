"""Stage-2 methods: one module each, holding its trainer (on the engine's :class:`~workbench.engine.Trainer`
template), its own settings dataclass and its registration (:func:`workbench.config.register_method`,
as timm registers models). ``method=`` in a config picks one; a setting of another method is refused.

    mar.py               L_MAR, the paper's method (soft multilabels, L_MDL, L_CML, L_AL, L_RJ)
    cluster_contrast.py  Cluster-Contrast (Dai et al. 2021): DBSCAN pseudo labels, cluster memory, InfoNCE
    soft_cluster.py      the hybrid: Cluster-Contrast clustering on features and soft multilabels
    oracle.py            the supervised upper bound: Cluster-Contrast's loss on the true identities
    cap.py               camera-aware proxies (CAP, Wang et al. 2021): a proxy per cluster and camera

A new method is one module here (and one import line below): a settings dataclass of
:func:`~workbench.config.setting` fields and a ``@register_method(name, Settings, title=...)`` trainer.
"""
from workbench.methods.cap import CAPSettings, CAPTrainer, CameraProxyMemory
from workbench.methods.cluster_contrast import ClusterContrastTrainer, ClusterSettings, MemorySettings
from workbench.methods.mar import MARSettings, MARTrainer, mined_pair_precision, term_gradient_shares
from workbench.methods.oracle import OracleSettings, OracleTrainer
from workbench.methods.soft_cluster import HybridSettings, SoftClusterTrainer

__all__ = ["CAPSettings", "CAPTrainer", "CameraProxyMemory", "ClusterContrastTrainer", "ClusterSettings", "HybridSettings", "MARSettings", "MARTrainer",
           "MemorySettings", "OracleSettings", "OracleTrainer", "SoftClusterTrainer", "mined_pair_precision",
           "term_gradient_shares"]
