"""The semi-supervised pipeline: resumable stages, atomic outputs, ensemble pseudo-labels."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mdiqa_jax import checkpointing
from mdiqa_jax import models
from mdiqa_jax import semi
from mdiqa_jax.semi import ensemble
from mdiqa_jax.semi import teachers
from mdiqa_jax.data import pipeline
from mdiqa_jax.data import preprocess
from mdiqa_jax.inference.checkpoint import load_checkpoint

from child_process import TESTS_DIR, child_env
import reference_pooling
import tiny_semi_config


def _mtimes(directory):
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


def _events(workdir, since=0):
  return [(e['stage'], e['event'], os.path.basename(e.get('path', '')))
          for e in semi.read_log(workdir)[since:]]


def _run_command(data_dir, workdir, cache_dir, *flags):
  """`python -m mdiqa_jax.semi` on the tiny config; compilations shared through a cache."""
  command = [sys.executable, '-m', 'mdiqa_jax.semi',
             f'--config={os.path.join(TESTS_DIR, "tiny_semi_config.py")}:{data_dir}',
             f'--workdir={workdir}', *flags]
  completed = subprocess.run(command, env=child_env(cache_dir), capture_output=True, text=True, timeout=300,
                             check=False)
  assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.fixture(scope='module')
def pipeline_run(tmp_path_factory, tiny_data_dir, compilation_cache):
  """Stage 1 by the command (--stop_after=teachers), a failed stage 2, then the rest.

  Returns a dict: workdir, config, mtimes after stage 1, the log length
  before the full run, the result, ...
  """
  data_dir, cache_dir = tiny_data_dir, compilation_cache
  workdir = str(tmp_path_factory.mktemp('semi'))
  _run_command(data_dir, workdir, cache_dir, '--stop_after=teachers')
  teachers_dir = os.path.join(workdir, 'teachers')
  after_teachers = _mtimes(teachers_dir)

  config = tiny_semi_config.get_config(data_dir)
  pseudo_dir = os.path.join(workdir, 'round_0', 'pseudo_labels')
  os.makedirs(os.path.dirname(pseudo_dir))
  teacher_dirs = [os.path.join(teachers_dir, f'teacher_{i}') for i in range(2)]
  # A provenance value JSON cannot write fails stage 2 after the arrays are written.
  with pytest.raises(TypeError):
    ensemble.make_pseudo_labels(teacher_dirs, pseudo_dir, workdir=workdir,
                            provenance_extra={'unwritable': object()})
  listing_after_failure = sorted(os.listdir(os.path.dirname(pseudo_dir)))

  log_length = len(semi.read_log(workdir))
  _run_command(data_dir, workdir, cache_dir)
  with open(os.path.join(workdir, semi.RESULT_FILE), encoding='utf-8') as f:
    result = json.load(f)
  return dict(workdir=workdir, config=config, data_dir=data_dir, after_teachers=after_teachers,
              listing_after_failure=listing_after_failure, log_length=log_length,
              result=result, teacher_dirs=teacher_dirs, pseudo_dir=pseudo_dir)


def test_stop_after_teachers_then_rerun_does_not_redo_teachers(pipeline_run):
  workdir = pipeline_run['workdir']
  first = _events(workdir)[:pipeline_run['log_length']]
  assert [e for e in first if e[1] == 'done'] == [('teachers', 'done', 'teacher_0'),
                                                  ('teachers', 'done', 'teacher_1')]
  # The resumed run skipped both teachers and left their files untouched.
  resumed = _events(workdir, pipeline_run['log_length'])
  assert resumed[:2] == [('teachers', 'skip', 'teacher_0'), ('teachers', 'skip', 'teacher_1')]
  assert [e for e in resumed if e[1] == 'done'] == [
      ('pseudo_labels', 'done', 'pseudo_labels'), ('students', 'done', 'student_0')] * 2
  assert _mtimes(os.path.join(workdir, 'teachers')) == pipeline_run['after_teachers']
  result = pipeline_run['result']
  assert set(result['test']) >= {'plcc', 'srocc', 'krocc', 'overall'}
  assert os.path.exists(result['test_predictions'])


def test_a_failed_stage_2_leaves_no_partial_output(pipeline_run):
  assert pipeline_run['listing_after_failure'] == []
  # The later run wrote the complete dataset.
  assert sorted(os.listdir(pipeline_run['pseudo_dir'])) == [semi.PROVENANCE_FILE,
                                                            semi.PSEUDO_LABELS_FILE]


def test_rerunning_a_finished_pipeline_skips_every_stage(pipeline_run):
  workdir = pipeline_run['workdir']
  before = _mtimes(workdir)
  log_length = len(semi.read_log(workdir))
  result = semi.run_pipeline(pipeline_run['config'], workdir)
  events = _events(workdir, log_length)
  assert {event for _, event, _ in events} == {'skip'}
  assert [stage for stage, _, _ in events] == ['teachers', 'teachers'] + [
      'pseudo_labels', 'students'] * 2
  after = _mtimes(workdir)
  changed = {path for path in after if before.get(path) != after[path]}
  assert changed == {os.path.join(workdir, name) for name in (semi.LOG_FILE,
                                                              semi.RESULT_FILE)}
  assert result['test'] == pipeline_run['result']['test']


def test_pseudo_labels_equal_mean_of_independent_teacher_predictions(pipeline_run):
  """Each teacher applied to each whole slice (one tile: slice side = tile side),
  its patches pooled by weight and body fraction with numpy, averaged with numpy."""
  config = pipeline_run['config']
  source = pipeline.open_source(config.data, config.data.unlabeled_split)
  images = np.stack([preprocess.as_slice(source[i]['image']) for i in range(len(source))])
  assert images.shape[1:] == (config.data.image_size,) * 2
  patch = models.patch_size(config.model)
  grid = config.data.image_size // patch
  fractions = [reference_pooling.patch_body(reference_pooling.body_mask(image), 0, 0, grid,
                                            patch) for image in images]
  centers = np.arange(21) * 0.2
  scores, probs = [], []
  for teacher_dir in pipeline_run['teacher_dirs']:
    teacher_config, params = load_checkpoint(teacher_dir)
    model = models.create_model(teacher_config)
    outputs = jax.device_get(jax.jit(model.apply)({'params': params}, images[..., None]))
    pooled = [reference_pooling.pool(outputs['patch_weights'][i], fractions[i],
                                     outputs['patch_log_probs'][i], centers)
              for i in range(len(images))]
    scores.append(np.array([score for score, _ in pooled]))
    probs.append(np.stack([p for _, p in pooled]))
  assert not np.allclose(scores[0], scores[1])  # Two different teachers.
  data = semi.load_pseudo_label_dataset(pipeline_run['pseudo_dir'])
  np.testing.assert_array_equal(data['index'], np.arange(len(source)))
  np.testing.assert_allclose(data['teacher_scores'], np.stack(scores), atol=1e-5)
  np.testing.assert_allclose(data['score'], (scores[0] + scores[1]) / 2, atol=1e-5)
  np.testing.assert_allclose(data['spread'], np.abs(scores[0] - scores[1]) / 2, atol=1e-5)
  np.testing.assert_allclose(data['target_probs'], (probs[0] + probs[1]) / 2, atol=1e-5)
  np.testing.assert_allclose(data['hidden_label'],
                             [source[i]['score'] for i in range(len(source))])
  provenance = json.load(open(os.path.join(pipeline_run['pseudo_dir'], semi.PROVENANCE_FILE)))
  assert [os.path.dirname(os.path.dirname(t['checkpoint'])) for t in provenance['teachers']
         ] == pipeline_run['teacher_dirs']
  assert provenance['split'] == 'unlabeled' and provenance['num_examples'] == len(source)


def test_second_round_student_learns_from_the_first_round_student(pipeline_run):
  workdir = pipeline_run['workdir']
  first_student = os.path.join(workdir, 'round_0', 'student_0')
  provenance_path = os.path.join(workdir, 'round_1', 'pseudo_labels', semi.PROVENANCE_FILE)
  with open(provenance_path, encoding='utf-8') as f:
    provenance = json.load(f)
  assert [os.path.dirname(os.path.dirname(t['checkpoint'])) for t in provenance['teachers']
         ] == [first_student]
  assert provenance['round'] == 1
  result = pipeline_run['result']
  assert [len(r['students']) for r in result['rounds']] == [1, 1]
  assert result['student_workdir'] == os.path.join(workdir, 'round_1', 'student_0')


def test_student_trains_on_the_soft_selection(pipeline_run):
  student_dir = os.path.join(pipeline_run['workdir'], 'round_0', 'student_0')
  selection = np.load(os.path.join(student_dir, semi.SELECTION_FILE))
  data = semi.load_pseudo_label_dataset(pipeline_run['pseudo_dir'])
  np.testing.assert_array_equal(selection['index'], data['index'])
  np.testing.assert_allclose(selection['target_probs'], data['target_probs'], rtol=1e-6)
  np.testing.assert_array_equal(selection['weight'], 0.5)
  saved = checkpointing.load_config(student_dir)
  assert saved.data.pseudo_labels == os.path.join(student_dir, semi.SELECTION_FILE)
  assert saved.seed == pipeline_run['config'].seed


def test_write_pseudo_label_dataset_is_atomic_and_cleans_killed_attempts(tmp_path):
  output_dir = str(tmp_path / 'pseudo_labels')
  os.makedirs(output_dir + '.partial')  # What a killed process leaves behind.
  with pytest.raises(TypeError):
    semi.write_pseudo_label_dataset(output_dir, {'score': np.ones(3)}, {'bad': {1, 2}})
  assert os.listdir(tmp_path) == []
  semi.write_pseudo_label_dataset(output_dir, {'score': np.ones(3)}, {'round': 0})
  assert os.listdir(tmp_path) == ['pseudo_labels']
  with pytest.raises(FileExistsError):
    semi.write_pseudo_label_dataset(output_dir, {'score': np.ones(3)}, {'round': 0})


def test_fold_complement_splits_cover_each_example_once_as_held_out():
  held_out = []
  for fold in range(3):
    split = teachers.fold_complement_split('train', 10, fold, 3)
    kept = set()
    for part in split.split('+'):
      start, stop = part[len('train['):-1].split(':')
      kept |= set(range(int(start or 0), int(stop or 10)))
    held_out.append(set(range(10)) - kept)
  assert sorted(i for fold in held_out for i in fold) == list(range(10))
  assert [len(fold) for fold in held_out] == [3, 3, 4]


def test_shared_dir_refuses_other_teacher_settings(tmp_path):
  config = tiny_semi_config.get_config(str(tmp_path))
  teachers.check_teacher_spec(str(tmp_path), teachers.teacher_configs(config))
  config.semi.strategy = 'hard'  # Student settings may differ ...
  teachers.check_teacher_spec(str(tmp_path), teachers.teacher_configs(config))
  config.semi.teacher_seeds = (1, 5)  # ... teacher settings may not.
  with pytest.raises(ValueError, match='shared_dir'):
    teachers.check_teacher_spec(str(tmp_path), teachers.teacher_configs(config))


@pytest.mark.parametrize('field,value', [('strategy', 'mean'), ('rounds', 0),
                                         ('teacher_folds', 1), ('teacher_seeds', ())])
def test_bad_semi_fields_are_rejected_before_training(tmp_path, field, value):
  config = tiny_semi_config.get_config(str(tmp_path))
  config.semi[field] = value
  with pytest.raises(ValueError, match=f'config.semi.{field}'):
    semi.run_pipeline(config, str(tmp_path / 'workdir'))
