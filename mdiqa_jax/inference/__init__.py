"""Inference: scoring trained models on whole slices, one path for every caller.

  checkpoint.py     a trained model for prediction: config + parameters of the
                    best intact step of a workdir (or of a named step)
  predict_fn.py     make_predict_fn(model, keys): the one jitted apply
  preprocessing.py  Preprocessing: how a slice becomes model input (the spec
                    recorded in outputs and exports)
  tiles.py          combine_tiles / patch_maps: pooling the tiles of a slice
  scoring.py        score_slices: the one loop, over any stream of slices
  split.py          predict_split: that loop over a dataset split (all hosts)
  paths.py          predict_paths: that loop over files and folders (mdiqa-predict)
  rows.py           the rows mdiqa-predict writes (CSV / JSON)
  heatmaps.py       one PNG of patch scores and weights per slice
  export.py         jax.export of the model with its preprocessing spec
  load_exported.py  reloads an export with jax and numpy only (copied into it)
  bundled.py        the model shipped in the package (mdiqa_jax/bundled/):
                    load with its sha256 checked, write (mdiqa-bundle)
  scorer.py         Scorer: the Python API (score HU arrays, score files)
  quality_fn.py     the score as a pure, differentiable JAX function
  compare.py        two folders scored side by side (mdiqa-predict --compare)
Evaluation, mdiqa-predict, the pseudo-labels of semi-supervision, export and
the benchmarks all go through these.
"""
