"""config.semi: its defaults and their check (configs/semi/*.py start from these)."""
import ml_collections

from mdiqa_jax.semi import pseudo_labels


def semi_config() -> ml_collections.ConfigDict:
  """Defaults of config.semi; configs/semi/*.py start from these."""
  semi = ml_collections.ConfigDict()
  semi.teacher_seeds = (1, 2, 3)        # M teachers, one per seed.
  semi.teacher_folds = 0                # F >= 2: teacher i leaves out fold i mod F.
  semi.teacher_num_train_steps = -1     # > 0 overrides config.num_train_steps for teachers.
  semi.shared_dir = ''                  # Teachers + round-0 pseudo-labels ('' = workdir).
  semi.strategy = 'hard'                # 'hard' | 'soft' | 'confidence'.
  semi.pseudo_weight = 1.0              # Loss weight of a pseudo-labeled slice (labeled: 1).
  semi.confidence_measure = 'ensemble_std'  # | 'total_std' (works with one teacher).
  semi.confidence_fraction = 0.5        # Keep floor(fraction * N) most confident slices ...
  semi.confidence_threshold = -1.0      # ... or, when >= 0, those with spread <= threshold.
  semi.rounds = 1                       # > 1: students become the next round's teachers.
  semi.num_students = 1                 # Students per round (seeds config.seed + j).
  return semi


def check_semi(semi: ml_collections.ConfigDict) -> None:
  if len(semi.teacher_seeds) < 1:
    raise ValueError('config.semi.teacher_seeds must name at least one teacher seed.')
  if semi.teacher_folds == 1 or semi.teacher_folds < 0:
    raise ValueError(f'config.semi.teacher_folds must be 0 (no folds) or >= 2, got '
                     f'{semi.teacher_folds}.')
  if semi.strategy not in pseudo_labels.STRATEGIES:
    raise ValueError(f'config.semi.strategy={semi.strategy!r}; expected one of '
                     f'{pseudo_labels.STRATEGIES}.')
  for field in ('rounds', 'num_students'):
    if semi[field] < 1:
      raise ValueError(f'config.semi.{field} must be >= 1, got {semi[field]}.')
