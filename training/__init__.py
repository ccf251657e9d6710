"""Training, evaluation and export of the models that ship inside ``pillow_kae``."""
