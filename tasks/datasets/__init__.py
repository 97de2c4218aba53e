"""Data sources: the user's files (``.npz``, CIFAR-10 batches) and the offline text corpus."""
