"""Building blocks of the model definitions, written so tensor parallelism can slot in."""
