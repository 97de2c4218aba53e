"""Training: the one loop with a pluggable loss and validation score, the losses (one KD term), and
what builds on them: embedding, mutual and multi-task distillation, transfer-pool rows."""
