"""Inference: the engine (device, precision, forward pass) behind evaluate, predict and training validation."""
