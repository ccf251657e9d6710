"""Benchmarks that print figures: rate-distortion against JPEG, speed, memory."""
