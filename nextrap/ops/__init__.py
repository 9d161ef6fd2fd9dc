"""The operations: what an extrapolation computes (:mod:`.options`), the pipeline (:mod:`.extrapolate`),
scoring methods on held-out checkpoints (:mod:`.backtest`), ``inspect`` (:mod:`.diagnostics`),
AlphaRL's truncation and the plots."""
