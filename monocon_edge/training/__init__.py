"""Training: run configs and presets (``config``), the loop (``loop``), distributed helpers, the encoder-feature
cache and the run directory writer. Importing this package imports none of them."""
