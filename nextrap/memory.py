"""How much LoRA factor data the math holds at once: the one default every chunked computation shares.

Work is done in chunks of equal-shape modules whose factors (across the checkpoints a step needs) fit
``chunk_bytes``; peak memory is a few times that, whatever the model size.
"""

DEFAULT_CHUNK_BYTES = 64 * 2**20
