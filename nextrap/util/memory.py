"""How much LoRA factor data the math holds at once: the one default every chunked computation shares.

Work is done in chunks of equal-shape modules whose factors (across the checkpoints a step needs) fit
``chunk_bytes``; peak memory is a few times that, whatever the model size.
"""

DEFAULT_CHUNK_BYTES = 64 * 2**20

# Small runs get smaller chunks: the working memory is several chunks, and a fixed 64 MiB would make it
# several times a 76 MiB checkpoint (a 7B model at r = 16 in bf16). An eighth of one checkpoint's
# factors in float32 keeps it under about twice a checkpoint, at least this much per chunk.
MIN_CHUNK_BYTES = 4 * 2**20


def chunk_limit(chunk_bytes: int, checkpoint_factor_bytes: int) -> int:
    """The chunk size to use: ``chunk_bytes``, capped at an eighth of one checkpoint's float32 factors
    (``checkpoint_factor_bytes``), but not below :data:`MIN_CHUNK_BYTES` (nor above ``chunk_bytes``)."""
    return min(chunk_bytes, max(MIN_CHUNK_BYTES, checkpoint_factor_bytes // 8))
