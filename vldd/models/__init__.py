"""Model factories: the offline `tiny://` and `shapes://` models (the paper's architectures with random weights)
behind every loader's ids, and the evaluation students."""
