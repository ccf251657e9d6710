"""Entropy models: the learned densities used in training and the integer tables used to code."""
