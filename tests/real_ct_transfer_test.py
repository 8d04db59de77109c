"""bench/real_ct_transfer.py, small: the independent simulator's physics, its DICOM
files, and the benchmark's pipeline end to end on one real slice and the tiny checkpoint."""
import math

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage

import bench_modules
import child_process

simulator = bench_modules.load('independent_ct_simulator')
bench_modules.load('bench_common')
bench = bench_modules.load('real_ct_transfer')


def _water_disk(size=64, radius_fraction=0.4):
  """(size, size) HU: a water disk (0 HU) in air (-1000 HU), and its inner half (bool)."""
  rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
  radius = np.hypot(rows, cols) / (radius_fraction * size)
  return np.where(radius < 1, 0.0, -1000.0), radius < 0.5


def test_noise_std_in_a_flat_roi_rises_as_one_over_sqrt_dose():
  hu, roi = _water_disk()
  angles = simulator.view_angles(128)
  line_integrals = simulator.project(hu, 0.8, angles)
  clean = simulator.reconstruct(line_integrals, angles, 64, 0.8, 'ramp')
  doses = (1.0, 0.5, 0.25, 0.1)
  noise = []
  for dose in doses:
    stds = [simulator.noise_std_hu(
        simulator.reconstruct(simulator.add_poisson_noise(
            line_integrals, 2e4 * dose, np.random.default_rng((seed, int(dose * 1000)))),
            angles, 64, 0.8, 'ramp'), clean, roi) for seed in range(3)]
    noise.append(np.sqrt(np.mean(np.square(stds))))
  assert all(np.diff(noise) > 0), noise
  np.testing.assert_allclose(np.array(noise) / noise[0], 1 / np.sqrt(doses), rtol=0.1)


def test_streak_energy_rises_as_views_fall():
  hu, _ = _water_disk()
  hu[28:34, 20:26] = 1500.0  # A bone insert: the streaks' source.
  reference = simulator.reconstruct(
      simulator.project(hu, 0.8, simulator.view_angles(512)), simulator.view_angles(512), 64,
      0.8, 'ramp')
  energies = []
  for views in (256, 64, 32, 16):
    angles = simulator.view_angles(views)
    image = simulator.reconstruct(simulator.project(hu, 0.8, angles), angles, 64, 0.8, 'ramp')
    energies.append(np.mean(np.square(image - reference)))
  assert all(np.diff(energies) > 0), energies


def test_photons_for_noise_hits_the_target_noise():
  hu, roi = _water_disk()
  angles = simulator.view_angles(128)
  line_integrals = simulator.project(hu, 0.8, angles)
  photons = simulator.photons_for_noise(line_integrals, angles, 64, 0.8, 'ramp', roi, 20.0,
                                        np.random.default_rng(0))
  clean = simulator.reconstruct(line_integrals, angles, 64, 0.8, 'ramp')
  noisy = simulator.reconstruct(
      simulator.add_poisson_noise(line_integrals, photons, np.random.default_rng(1)), angles,
      64, 0.8, 'ramp')
  assert abs(simulator.noise_std_hu(noisy, clean, roi) - 20.0) < 3.0


def test_dicom_round_trip_keeps_hu_within_1_hu_and_the_pixel_spacing(tmp_path):
  hu = np.random.default_rng(0).uniform(-1100.0, 2500.0, (48, 40))
  path = str(tmp_path / 'scan.dcm')
  simulator.write_ct_dicom(path, hu, 0.661468, description='test', study_key=['a'],
                           instance_key=['a', 'b'])
  ds = pydicom.dcmread(path)
  read_back = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  assert np.max(np.abs(read_back - hu)) <= 1.0
  assert [float(v) for v in ds.PixelSpacing] == [0.661468, 0.661468]
  assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
  assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
  assert all(uid.is_valid for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID,
                                      ds.StudyInstanceUID))
  again = simulator.read_source_slices(path, 'scan')[0]
  assert again.pixel_mm == 0.661468 and np.max(np.abs(again.hu - hu)) <= 1.0


def test_source_slices_are_the_four_package_frames_in_hu_with_their_spacing():
  sources = bench.source_slices()
  assert [(s.name, s.hu.shape, s.pixel_mm) for s in sources] == [
      ('CT_small', (128, 128), 0.661468), ('693_UNCI', (512, 512), 0.478516),
      ('eCT_Supplemental[0]', (512, 512), 0.388672),
      ('eCT_Supplemental[1]', (512, 512), 0.388672)]
  # The enhanced file's uint16 frames take the shared functional group's intercept.
  assert [s.hu.min() for s in sources[2:]] == [-1024.0, -1024.0]
  assert all(simulator.soft_tissue_roi(s.hu, s.pixel_mm).sum() > 500 for s in sources)


def test_sparse_view_counts_must_divide_the_full_scan():
  with pytest.raises(ValueError, match='100 views do not divide the 1024'):
    bench.degradations(1024, sparse_views=(100,))


def test_benchmark_scores_degraded_real_slice_with_tiny_checkpoint(tiny_checkpoint, tmp_path,
                                                                   compilation_cache):
  source = bench.source_slices()[0]  # CT_small, 128 x 128.
  # The doses and view count the figure shows, at a 128-view full scan.
  plan = bench.degradations(128, doses=(1.0, 0.1), sparse_views=(64,), seeds=(0,))
  photons, rows = bench.scan_slice(0, source, plan, full_views=128, filter_name='ramp',
                                   target_noise_hu=20.0, work_dir=str(tmp_path))
  assert photons > 0 and len(rows) == 3
  noise = {(r['dose'], r['views']): r['noise_std_hu'] for r in rows}
  assert noise[(1.0, 128)] < noise[(0.1, 128)] and noise[(1.0, 128)] < noise[(1.0, 64)]
  scores = bench.score_files(tiny_checkpoint.workdir, [r['file'] for r in rows],
                             str(tmp_path / 'predictions.json'),
                             env=child_process.child_env(compilation_cache))
  assert sorted(scores) == sorted(r['file'] for r in rows)
  assert all(math.isfinite(s['score']) and math.isfinite(s['uncertainty'])
             for s in scores.values())
  rows = [dict(r, **scores[r['file']]) for r in rows]
  summary = bench.summarise(rows, full_views=128)
  assert [s['name'] for s in summary['slices']] == ['CT_small']
  assert [(d['dose'], d['views']) for d in summary['slices'][0]['degradations']] == [
      (1.0, 128), (0.1, 128), (1.0, 64)]
  assert {'pooled_spearman_dose', 'pooled_spearman_views'} <= set(summary)
  bench.plot(summary, rows, [source], 128, str(tmp_path / 'figure.png'))
  assert (tmp_path / 'figure.png').stat().st_size > 0
