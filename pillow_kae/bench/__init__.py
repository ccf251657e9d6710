"""``kae bench``: rate-distortion of .kae against Pillow's other codecs on your own images.

Modules, one concept each: ``codecs`` (what is compared, through Pillow's public API),
``metrics`` (PSNR, MS-SSIM), ``bd`` (Bjøntegaard delta rate), ``sweep`` (measuring),
``report`` (JSON, Markdown, BD-rate matrices), ``plot`` (matplotlib, optional), ``crops``
(labelled side-by-side crops) and ``runner`` (the whole run). Importing ``pillow_kae``
does not import this package; nothing here imports TensorFlow until .kae codes a pixel.
"""
