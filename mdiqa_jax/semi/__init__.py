r"""Semi-supervised MD-IQA: teachers -> pseudo-labels -> student, as resumable stages.

  python -m mdiqa_jax.semi --config=configs/semi/hard.py --workdir=DIR \
      [--config.semi.pseudo_weight=0.5 ...] [--stop_after=teachers|pseudo_labels]

Stages (each skipped when its output exists, so rerunning the command after a
crash, a kill or preemption continues where it stopped):
  1. teachers: one training run (mdiqa_jax.train) per seed in
     config.semi.teacher_seeds, each on the whole labeled split or, with
     config.semi.teacher_folds = F >= 2, on all but fold (i mod F). A
     teacher's run resumes from its own checkpoints; it counts as done once
     its done.json exists.
  2. pseudo_labels: every teacher scores the unlabeled split (whole
     slices, as evaluation does); the ensemble's mean score, spread, total std and mean
     distributions, with every teacher's predictions, are written as
     pseudo_labels.npz + provenance.json (teacher checkpoints, configs,
     pseudo-label quality against the split's hidden labels). The directory
     is assembled under a temporary name and renamed into place, so it either
     exists complete or not at all.
  3. students: the labeled split plus the pseudo-labeled slices chosen by
     config.semi.strategy ('hard' | 'soft' | 'confidence', see
     pseudo_labels.py), each pseudo-labeled slice weighted
     config.semi.pseudo_weight in the loss (data/mixture.py). The student
     trains for the same number of steps as a supervised run
     (config.num_train_steps, or num_epochs over the labeled split).
  With config.semi.rounds = R > 1, round r >= 1 repeats stages 2-3 with the
  previous round's students as the teachers.

Workdir layout:
  semi_log.jsonl                      stage events (start / done / skip), one JSON per line
  teachers/teacher_<i>/               training workdirs (+ done.json)        [shared_dir]
  round_0/pseudo_labels/              pseudo_labels.npz, provenance.json     [shared_dir]
  round_<r>/pseudo_labels/            for r >= 1
  round_<r>/student_<j>/              selection.npz, training workdir, done.json
  result.json                         the last round's students' test metrics
Teachers and round-0 pseudo-labels depend only on the teacher settings, so
config.semi.shared_dir can put them in a directory that several configs
(strategies, student seeds) share; it holds teacher_spec.json, and a config
whose teachers differ from it is refused.

Single process: the stages run on one host (training itself may use all its
local devices).

Modules: config.py (config.semi), records.py (log, pseudo-label datasets),
teachers.py (stage 1), ensemble.py (stage 2), pseudo_labels.py (the pure numpy
ensemble statistics and selection strategies), students.py (stage 3),
pipeline.py (the stages in order), main.py (the command).
"""
from mdiqa_jax.semi.config import semi_config
from mdiqa_jax.semi.main import main, run
from mdiqa_jax.semi.pipeline import run_pipeline
from mdiqa_jax.semi.records import (LOG_FILE, PROVENANCE_FILE, PSEUDO_LABELS_FILE, RESULT_FILE,
                                    SELECTION_FILE, load_pseudo_label_dataset, read_log,
                                    write_pseudo_label_dataset)

__all__ = ['LOG_FILE', 'PROVENANCE_FILE', 'PSEUDO_LABELS_FILE', 'RESULT_FILE', 'SELECTION_FILE',
           'load_pseudo_label_dataset', 'main', 'read_log', 'run', 'run_pipeline', 'semi_config',
           'write_pseudo_label_dataset']
