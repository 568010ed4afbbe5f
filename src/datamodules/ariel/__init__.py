"""Ariel Data Challenge data: raw-format reader, simulator, calibration chain, datamodule.

One way through the package::

    layout.py      where the files are (2025 naming; 2024 by ``edition``)
    tables.py      labels, star info, ADC table, axis info (checked)
    reader.py      one planet visit's frames + calibration maps -> RawExposure (checked)
    detector.py    the noise model (shot noise cumulative over a read pair, read noise, ADC
                   rounding, non-linearity), polynomials, sigma clipping, masked-pixel filling
    exposure.py    Exposure: signal + variance + mask + times + context, what every step passes on
    steps.py       the calibration steps, registered by name (adc, mask, linearity, dark, cds,
                   bin, flat, background, extract)
    settings.py    per-instrument settings (bin size, aperture, background, spectral columns)
    chain.py       steps built from ``data.calibration.steps``, chunked runs, the chain hash
    cache.py       calibrated planets on disk, keyed by (raw-file fingerprint, chain hash)
    datamodule.py  ArielDataModule: prepare_data calibrates and caches, setup reads the cache
    forward.py     the simulator's forward model (the chain run backwards)
    simulate.py    ``python -m src.datamodules.ariel.simulate``: a toy dataset in the real layout

Units: raw frames in ADU; after ``adc`` electrons; light curves in electrons per read difference
(the charge collected between the two reads of a pair), variances in electrons squared; times in
hours; integration times in seconds; wavelengths in microns; depths as fractions.
"""
