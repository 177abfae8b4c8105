"""Training: run configs and presets (``config``), the loop (``loop``), the two tasks (``vision_task``,
``text_task``; ``tasks`` picks one) with their batches (``train_batch``) and shared d_eff / truncation figures
(``dimension_metrics``), distributed helpers, the encoder-feature cache and the run directory writer. Importing
this package imports none of them."""
