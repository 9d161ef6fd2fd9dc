"""Inside a training loop: record LoRA factors as training goes and jump in place (:mod:`.callbacks`),
and the transformers ``Trainer`` callback (:mod:`.transformers`, which imports transformers)."""
