"""``kae bench``: rate-distortion of .kae against Pillow's other codecs on your own images.

Modules, one concept each: ``codecs`` (what is compared, through Pillow's public API),
``bd`` (Bjøntegaard delta rate), ``sweep`` (measuring; the measures are
``pillow_kae.metrics``, which the encoder uses too),
``report`` (JSON, Markdown, BD-rate matrices), ``plot`` (matplotlib, optional), ``crops``
(labelled side-by-side crops) and ``runner`` (the whole run). Importing ``pillow_kae``
does not import this package; nothing here imports TensorFlow until .kae codes a pixel.
"""
