"""ReID workbench: unsupervised person re-identification by soft multilabel learning."""
__version__ = "0.1.0"
