"""Video frame pairs for learned post-filters: codec round trip (PyAV), cache, time split, datamodule."""
