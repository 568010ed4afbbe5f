"""The label review app: suspects from out-of-fold predictions, decided by a person in the browser.

``review.py`` is its entry point: a local Starlette app (``app.py``) over one review session
(``session.py``: queue, leases, undo), every decision journalled (``journal.py``) and exported into
the dataset's cleaning manifest, which the image datamodule applies.
"""
