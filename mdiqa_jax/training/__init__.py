"""The training job as a library: `loop.train_and_evaluate(config, workdir)`.

  setup.py      step count, pretrained backbones, the dataset and its splits
  progress.py   train metrics: fetched lazily, checked finite, TensorBoard, log line
  loop.py       train -> validate -> checkpoint -> evaluate the best step on test
The step itself is `mdiqa_jax.train_step`, its loss `mdiqa_jax.losses`, its
optimiser `mdiqa_jax.optim`, its checkpoints `mdiqa_jax.checkpointing`; the
command is `mdiqa_jax/train.py`.
"""
