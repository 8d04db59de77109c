r"""The sweep: a list of configs over seeds, run, and the results report.

  python -m mdiqa_jax.sweep --configs='configs/ablations/*.py,configs/semi/*.py' \
      --seeds=0,1,2 --workdir=runs/sweep --results=docs/RESULTS.md \
      [--set=num_train_steps=150 --set=data.data_dir=/data/tfds ...] \
      [--notes=docs/results_notes.md] [--report_only]

Every (config, seed) pair is one run (all configs of the first seed, then of
the next, ...) with its own workdir
<workdir>/<group>/<name>/seed_<seed> (group = the config's folder), started as
its own command -- `python -m mdiqa_jax.train` for plain configs,
`python -m mdiqa_jax.semi` for configs with a `semi` field -- with
--config.seed=<seed> and every --set as --config.<field>=<value>; its output
goes to run.log there. A run is finished once the sweep wrote its
sweep_result.json; rerunning the sweep skips finished runs and resumes the
others (the commands resume from their checkpoints). A run whose resolved
config equals a finished run's (configs/semi/none.py and
configs/ablations/full.py) reuses that run's result. Semi-supervised configs
with the same teacher settings share one teacher ensemble
(config.semi.shared_dir = <workdir>/teachers_<hash>): teachers are trained
once, students per config and seed.

The report (--results) holds, per group, a Markdown table of mean ± std over
seeds of PLCC / SROCC / KROCC / overall and the wall time per run; the paper's
claims as comparisons of rows; pseudo-label quality; the uncertainty check
(Spearman correlation of |error| with the predicted std on the test split,
coverage of ±1 and ±2 std); and PNG plots <results dir>/images/<report>_*.png
(RESULTS.md -> images/results_*.png: bars with error bars per group,
predictions vs labels of the best run, calibration of the best distribution
model). --notes inserts a hand-written Markdown file.

Modules: plan.py (configs x seeds -> runs), execute.py (one run as its own
command), stats.py (uncertainty check, comparisons), report.py (Markdown and
plots), run.py (`run_sweep`); the command is `mdiqa_jax/sweep.py`.
"""
