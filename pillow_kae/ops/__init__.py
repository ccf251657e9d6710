"""Array functions shared by the Keras layers (training) and the inference runtime."""
