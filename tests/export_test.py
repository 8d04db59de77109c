"""mdiqa-export: the reloaded StableHLO model gives the model's outputs, without mdiqa_jax."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mdiqa_jax import export
from mdiqa_jax import models
from mdiqa_jax import predict


def _images(batch, seed=0):
  return np.random.default_rng(seed).random((batch, 64, 64, 1), dtype=np.float32)


def _model_outputs(checkpoint, images):
  model = models.create_model(checkpoint.config)
  apply = jax.jit(lambda params, x: model.apply({'params': params}, x))
  return jax.device_get(apply(checkpoint.params, images))


@pytest.fixture(scope='module')
def exported_dir(tiny_checkpoint, tmp_path_factory):
  """Export of the tiny checkpoint's step directory with a symbolic batch."""
  output = str(tmp_path_factory.mktemp('export') / 'model')
  export.export_checkpoint(tiny_checkpoint.step_dir, output)
  return output


def test_reloaded_model_matches_the_model_for_any_batch(tiny_checkpoint, exported_dir):
  model = export.load_exported(exported_dir)
  for batch in (3, 1):
    images = _images(batch, seed=batch)
    outputs = model(images)
    expected = _model_outputs(tiny_checkpoint, images)
    assert set(outputs) == set(export.OUTPUT_KEYS)
    for key in export.OUTPUT_KEYS:
      np.testing.assert_allclose(outputs[key], expected[key], rtol=0, atol=1e-5, err_msg=key)


def test_spec_records_preprocessing_and_outputs(exported_dir):
  with open(os.path.join(exported_dir, 'preprocessing.json'), encoding='utf-8') as f:
    spec = json.load(f)
  assert spec['input']['shape'] == ['B', 64, 64, 1] and spec['input']['batch_size'] is None
  assert spec['preprocessing']['tile_size'] == 64 and spec['preprocessing']['patch_size'] == 16
  assert spec['preprocessing']['pixel_mm_range'] == [0.4, 0.95]
  assert spec['preprocessing']['assumed_pixel_mm'] == 0.75
  assert (spec['preprocessing']['window_width'], spec['preprocessing']['window_level']) == (
      350.0, 40.0)
  assert set(spec['outputs']) == set(export.OUTPUT_KEYS)
  assert spec['num_scales'] == 3 and spec['score_range'] == [0.0, 4.0]
  assert spec['config']['model']['head']['hidden'] == 16


def test_copied_loader_runs_without_mdiqa_jax(tiny_checkpoint, exported_dir, tmp_path):
  images = _images(2, seed=7)
  np.save(tmp_path / 'images.npy', images)
  script = (
      'import sys\n'
      # The package may be pip-installed; make every import of it fail, so the
      # loader provably runs on jax + numpy alone.
      "sys.modules['mdiqa_jax'] = None\n"
      'from load_exported import load_exported\n'
      'import numpy as np\n'
      f"model = load_exported('.')\n"
      f"np.save({str(tmp_path / 'scores.npy')!r}, model(np.load({str(tmp_path / 'images.npy')!r}))"
      "['score'])\n")
  env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, '-c', script], cwd=exported_dir, env=dict(
      env, JAX_PLATFORMS='cpu'), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  np.testing.assert_allclose(np.load(tmp_path / 'scores.npy'),
                             _model_outputs(tiny_checkpoint, images)['score'], atol=1e-5)


def test_fixed_batch_export_refuses_other_batch_sizes(tiny_checkpoint, tmp_path):
  output = str(tmp_path / 'fixed')
  exported = export.export_model(tiny_checkpoint.config, tiny_checkpoint.params, batch_size=2)
  spec = export.preprocessing_spec(
      predict.Preprocessing.from_config(tiny_checkpoint.config), batch_size=2,
      config=tiny_checkpoint.config, exported=exported, checkpoint='test')
  export.write_export(output, exported, tiny_checkpoint.params, spec)
  model = export.load_exported(output)
  np.testing.assert_allclose(model(_images(2))['score'],
                             _model_outputs(tiny_checkpoint, _images(2))['score'], atol=1e-5)
  with pytest.raises(ValueError, match='fixed batch of 2 images, got 3'):
    model(_images(3))


def test_existing_folders_and_missing_checkpoints_are_refused(tiny_checkpoint, exported_dir,
                                                              tmp_path):
  other = tmp_path / 'photos'
  other.mkdir()
  (other / 'holiday.jpg').write_bytes(b'keep me')
  for overwrite in (False, True):
    with pytest.raises(FileExistsError, match=f'^{other}: '):
      export.export_checkpoint(tiny_checkpoint.step_dir, str(other), overwrite=overwrite)
  assert (other / 'holiday.jpg').read_bytes() == b'keep me'
  with pytest.raises(FileExistsError, match='pass --overwrite'):
    export.check_output_dir(exported_dir, overwrite=False)
  export.check_output_dir(exported_dir, overwrite=True)  # A previous export may be replaced.
  with pytest.raises(predict.CheckpointError, match='no such checkpoint'):
    export.export_checkpoint(str(tmp_path / 'missing'), str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError, match='not an mdiqa-export folder'):
    export.load_exported(str(other))


def test_python_dash_m_command_line(tiny_checkpoint, tmp_path):
  output = str(tmp_path / 'cli_export')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([repo, os.environ.get('PYTHONPATH', '')]))

  def run_export(*extra):
    return subprocess.run(
        [sys.executable, '-m', 'mdiqa_jax.export', '--checkpoint', tiny_checkpoint.workdir,
         '--output', output, '--platforms=cpu,cuda', *extra],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)

  first = run_export()
  assert first.returncode == 0, first.stderr
  assert sorted(os.listdir(output)) == ['load_exported.py', 'model.jaxexport', 'params.npz',
                                        'preprocessing.json']
  assert export.load_exported(output).spec['platforms'] == ['cpu', 'cuda']
  second = run_export()
  assert second.returncode == predict.EXIT_FATAL
  assert f'{output}: already exists and is not empty' in second.stderr
