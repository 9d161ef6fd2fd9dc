"""A run in memory: one checkpoint's header and a run's headers (no torch, :mod:`.scan`), the tensor
readers, the trajectory with its rank-1 features, and opening a run (:mod:`.open`)."""
