"""On-disk formats nextrap reads and writes, with no torch: PEFT's file names and rank/alpha rules, the
report ``nextrap.json``, verl's rank-shard files and the pickle reader that lists them without running them."""
