"""archgen.train: data sources, synthetic capability tasks, the training loop, distillation.

The package itself imports nothing heavy (the spec front end reads :mod:`archgen.train.config`
and must stay torch-free); import the modules you need:

* :mod:`archgen.train.config`     -- ``TrainConfig`` and the data-source configs
* :mod:`archgen.train.data`       -- ``load_data`` (text, token files, tasks), seeded batches
* :mod:`archgen.train.tasks`      -- associative/noisy/fuzzy recall, selective copy, compression,
  memorization; ``answer_accuracy``
* :mod:`archgen.train.loop`       -- ``train``: AdamW, schedule, validation, checkpoints, resume
* :mod:`archgen.train.distill`    -- logit + feature distillation from a trained teacher
* :mod:`archgen.train.blockwise`  -- blockwise local distillation score tables (for search)
"""
