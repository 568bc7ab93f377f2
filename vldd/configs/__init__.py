"""Every job's settings: typed dataclasses whose field comments are the CLI's help. Torch-free (the CLI reads
them before any model library is imported)."""
