"""``medseg select``: choose the configuration or ensemble, and the post-processing, that the
out-of-fold predictions of cross-validation score best (nnU-Net's find-best-configuration and
post-processing determination)."""
