"""Models: the zoo, the model <-> artifact round trip (build), transformer encoders, the multi-head
student and forward hooks."""
