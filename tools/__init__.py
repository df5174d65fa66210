"""Tools that sit outside the pipeline core: the CI pipeline check and the sweep grid."""
