"""Readers: DICOM / TIFF / PNG / .npy files written here, HU rules, and bad files."""
import os
import warnings

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from mdiqa_jax import io as ct_io


def _hu_slice(shape=(48, 40), seed=0):
  """Integer HU values of a plausible CT slice (air to bone)."""
  return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.int16)


def _read(path, intensity='auto'):
  return ct_io.read_file(path, ct_io.file_format(path), intensity)


def _read_quietly(path, intensity='auto'):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', ct_io.AssumedIntensityWarning)
    return _read(path, intensity)


# --- DICOM -----------------------------------------------------------------


def test_dicom_applies_rescale_slope_and_intercept(tmp_path, write_ct_dicom):
  stored = np.random.default_rng(1).integers(-2000, 4000, size=(40, 36)).astype(np.int16)
  path = write_ct_dicom(str(tmp_path / 'a.dcm'), stored, slope=0.5, intercept=-1024.0,
                        z_mm=-12.5, instance_number=7)
  (ct_slice,) = _read(path)
  assert ct_slice.intensity == ct_io.HU and ct_slice.index == 0
  assert ct_slice.pixels.dtype == np.float32 and ct_slice.pixels.shape == (40, 36)
  np.testing.assert_array_equal(ct_slice.pixels, stored.astype(np.float64) * 0.5 - 1024.0)
  assert ct_slice.metadata['instance_number'] == 7
  assert ct_slice.metadata['z_mm'] == pytest.approx(-12.5)


def test_dicom_unsigned_storage_and_missing_rescale(tmp_path, write_ct_dicom):
  stored = np.random.default_rng(2).integers(0, 3000, size=(40, 40)).astype(np.uint16)
  (rescaled,) = _read(write_ct_dicom(str(tmp_path / 'u.dcm'), stored, 1.0, -1024.0))
  np.testing.assert_array_equal(rescaled.pixels, stored.astype(np.float32) - 1024.0)
  # Without RescaleSlope / RescaleIntercept the stored values are the HU.
  plain = _hu_slice((40, 40), seed=3)
  (identity,) = _read(write_ct_dicom(str(tmp_path / 'p.dcm'), plain, rescale=False))
  np.testing.assert_array_equal(identity.pixels, plain.astype(np.float32))


def test_enhanced_multiframe_dicom_uses_per_frame_rescale(tmp_path, write_enhanced_ct_dicom):
  stored = np.stack([_hu_slice((36, 44), seed=s) for s in range(3)])
  slopes, intercepts, z_mm = [1.0, 0.5, 2.0], [-1024.0, 0.0, 10.0], [0.0, 2.5, 5.0]
  path = write_enhanced_ct_dicom(str(tmp_path / 'multi.dcm'), stored, slopes, intercepts, z_mm)
  frames = _read(path)
  assert [f.index for f in frames] == [0, 1, 2]
  for frame, slope, intercept, z in zip(frames, slopes, intercepts, z_mm):
    np.testing.assert_array_equal(
        frame.pixels, stored[frame.index].astype(np.float64) * slope + intercept)
    assert frame.metadata['z_mm'] == pytest.approx(z)
    assert frame.metadata['slope'] == slope


def test_dicom_pixel_spacing_is_read_and_bad_values_are_left_out(tmp_path, write_ct_dicom):
  stored = _hu_slice((40, 40), seed=4)
  (spaced,) = _read(write_ct_dicom(str(tmp_path / 's.dcm'), stored,
                                   PixelSpacing=[0.5, 0.625]))
  assert spaced.pixel_mm == (0.5, 0.625)
  (unspaced,) = _read(write_ct_dicom(str(tmp_path / 'n.dcm'), stored))
  assert unspaced.pixel_mm is None
  (zero,) = _read(write_ct_dicom(str(tmp_path / 'z.dcm'), stored, PixelSpacing=[0.0, 0.7]))
  assert zero.pixel_mm is None


def test_enhanced_dicom_spacing_comes_from_the_pixel_measures_sequence(tmp_path,
                                                                       write_enhanced_ct_dicom):
  path = write_enhanced_ct_dicom(str(tmp_path / 'multi.dcm'),
                                 np.stack([_hu_slice((36, 36), seed=s) for s in range(2)]),
                                 [1.0, 1.0], [0.0, 0.0], [0.0, 1.0])
  ds = pydicom.dcmread(path)
  measures = pydicom.Dataset()
  measures.PixelSpacing = [0.7, 0.7]
  ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence = pydicom.Sequence([measures])
  own = pydicom.Dataset()
  own.PixelSpacing = [0.4, 0.45]
  ds.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence = pydicom.Sequence([own])
  ds.save_as(path)
  first, second = _read(path)
  assert first.pixel_mm == (0.7, 0.7) and second.pixel_mm == (0.4, 0.45)


def test_package_ct_slices_carry_their_spacing():
  """The real CT slices pydicom and pydicom-data ship (the transfer benchmark's)."""
  from pydicom import data as pydicom_data  # pylint: disable=g-import-not-at-top
  (small,) = _read(pydicom_data.get_testdata_file('CT_small.dcm'))
  assert small.pixel_mm == pytest.approx((0.661468, 0.661468))
  assert small.pixels.shape == (128, 128)


def test_folder_series_is_ordered_along_the_slice_normal(tmp_path, write_ct_dicom):
  series = tmp_path / 'series'
  series.mkdir()
  # File names and instance numbers disagree with the positions on purpose.
  for name, z, number in [('b', 5.0, 1), ('c', -5.0, 3), ('a', 0.0, 2)]:
    write_ct_dicom(str(series / name), _hu_slice((32, 32)), z_mm=z, instance_number=number)
  (series / 'notes.txt').write_text('not an image')
  found = ct_io.find_inputs([str(tmp_path)])
  assert [os.path.basename(p) for p, _ in found.files] == ['c', 'a', 'b']
  assert all(kind == ct_io.DICOM for _, kind in found.files)
  assert found.skipped == [str(series / 'notes.txt')] and not found.failures


def test_series_without_positions_is_ordered_by_instance_number(tmp_path, write_ct_dicom):
  for name, number in [('x.dcm', 3), ('y.dcm', 1), ('z.dcm', 2)]:
    path = write_ct_dicom(str(tmp_path / name), _hu_slice((32, 32)), instance_number=number)
    ds = pydicom.dcmread(path)  # Drop the geometry that would decide the order.
    del ds.ImagePositionPatient
    ds.save_as(path, enforce_file_format=True)
  found = ct_io.find_inputs([str(tmp_path)])
  assert [os.path.basename(p) for p, _ in found.files] == ['y.dcm', 'z.dcm', 'x.dcm']


def test_series_takes_the_place_of_its_first_file_among_other_formats(tmp_path, write_ct_dicom):
  np.save(tmp_path / 'a.npy', np.zeros((32, 32), np.float32))
  write_ct_dicom(str(tmp_path / 'b.dcm'), _hu_slice((32, 32)), z_mm=1.0)
  np.save(tmp_path / 'c.npy', np.zeros((32, 32), np.float32))
  write_ct_dicom(str(tmp_path / 'd.dcm'), _hu_slice((32, 32)), z_mm=0.0)
  found = ct_io.find_inputs([str(tmp_path)])
  assert [os.path.basename(p) for p, _ in found.files] == ['a.npy', 'd.dcm', 'b.dcm', 'c.npy']


# --- TIFF ------------------------------------------------------------------


def test_tiff_float_unit_range_is_taken_as_windowed(tmp_path):
  image = np.random.default_rng(4).random((40, 40), dtype=np.float32)
  tifffile.imwrite(tmp_path / 's.tif', image)
  (ct_slice,) = _read(str(tmp_path / 's.tif'))
  assert ct_slice.intensity == ct_io.UNIT
  np.testing.assert_array_equal(ct_slice.pixels, image)


def test_tiff_stack_and_hu_values(tmp_path):
  stack = np.stack([_hu_slice((36, 36), seed=s) for s in range(3)]).astype(np.float32)
  tifffile.imwrite(tmp_path / 'stack.tiff', stack, photometric='minisblack')
  slices = _read(str(tmp_path / 'stack.tiff'))
  assert [s.index for s in slices] == [0, 1, 2]
  assert all(s.intensity == ct_io.HU for s in slices)
  np.testing.assert_array_equal(np.stack([s.pixels for s in slices]), stack)
  tifffile.imwrite(tmp_path / 'int16.tif', stack[0].astype(np.int16))
  (signed,) = _read(str(tmp_path / 'int16.tif'))
  assert signed.intensity == ct_io.HU
  np.testing.assert_array_equal(signed.pixels, stack[0])


def test_tiff_unsigned_is_greyscale_with_a_warning_and_rgb_grey_is_accepted(tmp_path):
  grey = np.random.default_rng(5).integers(0, 65536, size=(40, 40)).astype(np.uint16)
  tifffile.imwrite(tmp_path / 'u16.tif', grey)
  with pytest.warns(ct_io.AssumedIntensityWarning, match='u16.tif'):
    (ct_slice,) = _read(str(tmp_path / 'u16.tif'))
  np.testing.assert_allclose(ct_slice.pixels, grey / 65535.0, rtol=1e-6)
  rgb = np.repeat((grey // 256).astype(np.uint8)[..., None], 3, axis=-1)
  tifffile.imwrite(tmp_path / 'rgb.tif', rgb, photometric='rgb')
  (from_rgb,) = _read_quietly(str(tmp_path / 'rgb.tif'))
  np.testing.assert_allclose(from_rgb.pixels, (grey // 256) / 255.0, rtol=1e-6)


# --- PNG -------------------------------------------------------------------


@pytest.mark.parametrize('dtype,scale', [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_png_is_divided_by_its_dtype_max_with_a_warning(tmp_path, dtype, scale):
  grey = np.random.default_rng(6).integers(0, int(scale) + 1, size=(40, 48)).astype(dtype)
  Image.fromarray(grey).save(tmp_path / 'g.png')
  with pytest.warns(ct_io.AssumedIntensityWarning, match='no HU information'):
    (ct_slice,) = _read(str(tmp_path / 'g.png'))
  assert ct_slice.intensity == ct_io.UNIT and ct_slice.pixels.shape == (40, 48)
  np.testing.assert_allclose(ct_slice.pixels, grey / scale, rtol=1e-6)


def test_png_rgb_grey_palette_and_hu_override(tmp_path):
  grey = np.random.default_rng(7).integers(0, 256, size=(40, 40)).astype(np.uint8)
  Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(tmp_path / 'rgb.png')
  Image.fromarray(grey).convert('P').save(tmp_path / 'palette.png')
  for name in ('rgb.png', 'palette.png'):
    (ct_slice,) = _read_quietly(str(tmp_path / name))
    np.testing.assert_allclose(ct_slice.pixels, grey / 255.0, rtol=1e-6)
  Image.fromarray(grey).save(tmp_path / 'hu.png')
  (as_hu,) = _read(str(tmp_path / 'hu.png'), intensity='hu')
  assert as_hu.intensity == ct_io.HU
  np.testing.assert_array_equal(as_hu.pixels, grey.astype(np.float32))


# --- NumPy -----------------------------------------------------------------


def test_npy_slice_stack_and_channel_axis(tmp_path):
  unit = np.random.default_rng(8).random((40, 40, 1)).astype(np.float64)
  np.save(tmp_path / 'unit.npy', unit)
  (ct_slice,) = _read(str(tmp_path / 'unit.npy'))
  assert ct_slice.intensity == ct_io.UNIT
  np.testing.assert_array_equal(ct_slice.pixels, unit[..., 0].astype(np.float32))
  stack = np.stack([_hu_slice((40, 40), seed=s) for s in range(4)])
  np.save(tmp_path / 'stack.npy', stack)
  slices = _read(str(tmp_path / 'stack.npy'))
  assert len(slices) == 4 and all(s.intensity == ct_io.HU for s in slices)
  np.testing.assert_array_equal(slices[3].pixels, stack[3])


def test_to_unit_windows_hu_with_the_soft_tissue_window_and_keeps_unit_slices():
  hu = np.array([[-1000.0, -135.0, 40.0], [215.0, 1000.0, 0.0]], np.float32)
  ct_slice = ct_io.Slice(file='f', index=0, pixels=hu, intensity=ct_io.HU)
  # Width 350, level 40: [-135, 215] HU -> [0, 1].
  expected = np.clip((hu + 135.0) / 350.0, 0.0, 1.0)
  np.testing.assert_allclose(ct_io.to_unit(ct_slice), expected, atol=1e-7)
  np.testing.assert_allclose(ct_io.to_unit(ct_slice, 400.0, 50.0),
                             np.clip((hu + 150.0) / 400.0, 0.0, 1.0), atol=1e-7)
  unit = ct_io.Slice(file='f', index=0, pixels=expected, intensity=ct_io.UNIT)
  assert ct_io.to_unit(unit) is expected


# --- Bad inputs --------------------------------------------------------------


def _truncate(path, keep_bytes):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:keep_bytes])


def _bad_files(tmp_path, write_ct_dicom, write_dicom_without_pixels):
  """(path, expected words in the message) for each kind of bad input."""
  cases = []
  dcm = write_ct_dicom(str(tmp_path / 'truncated.dcm'), _hu_slice((64, 64)))
  _truncate(dcm, 600)
  cases.append((dcm, 'DICOM'))
  cases.append((write_dicom_without_pixels(str(tmp_path / 'report.dcm')), 'without pixel data'))
  (tmp_path / 'text.dcm').write_text('hello')
  cases.append((str(tmp_path / 'text.dcm'), 'not a DICOM file'))
  (tmp_path / 'garbage.tif').write_bytes(b'II*\x00' + os.urandom(64))
  cases.append((str(tmp_path / 'garbage.tif'), 'cannot read as a TIFF'))
  Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / 'truncated.png')
  _truncate(str(tmp_path / 'truncated.png'), 40)
  cases.append((str(tmp_path / 'truncated.png'), 'cannot read as a PNG'))
  (tmp_path / 'garbage.npy').write_bytes(os.urandom(100))
  cases.append((str(tmp_path / 'garbage.npy'), 'not a .npy file'))
  np.save(tmp_path / 'objects.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  cases.append((str(tmp_path / 'objects.npy'), 'cannot read as a .npy'))
  np.save(tmp_path / 'line.npy', np.zeros(64, np.float32))
  cases.append((str(tmp_path / 'line.npy'), 'expected a slice'))
  np.save(tmp_path / 'volume4d.npy', np.zeros((2, 2, 64, 64), np.float32))
  cases.append((str(tmp_path / 'volume4d.npy'), 'expected a slice'))
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / 'icon.png')
  cases.append((str(tmp_path / 'icon.png'), 'expected at least'))
  nan = np.zeros((64, 64), np.float32)
  nan[3, 4] = np.nan
  np.save(tmp_path / 'nan.npy', nan)
  cases.append((str(tmp_path / 'nan.npy'), 'NaN/inf'))
  inf = np.zeros((2, 64, 64), np.float32)
  inf[1, 0, 0] = np.inf
  tifffile.imwrite(tmp_path / 'inf.tif', inf, photometric='minisblack')
  cases.append((str(tmp_path / 'inf.tif'), 'NaN/inf'))
  colour = np.zeros((64, 64, 3), np.uint8)
  colour[..., 0] = 200
  Image.fromarray(colour).save(tmp_path / 'colour.png')
  cases.append((str(tmp_path / 'colour.png'), 'colour image'))
  np.save(tmp_path / 'complex.npy', np.zeros((64, 64), np.complex64))
  cases.append((str(tmp_path / 'complex.npy'), 'pixel type complex64'))
  return cases


def test_each_bad_file_raises_an_error_naming_it(tmp_path, write_ct_dicom,
                                                 write_dicom_without_pixels):
  for path, words in _bad_files(tmp_path, write_ct_dicom, write_dicom_without_pixels):
    with pytest.raises(ct_io.InputFileError) as info:
      _read_quietly(path)
    message = str(info.value)
    assert message.startswith(path + ': '), message
    assert words in message, message
    assert info.value.path == path


def test_zero_rescale_slope_is_refused(tmp_path, write_ct_dicom):
  path = write_ct_dicom(str(tmp_path / 'flat.dcm'), _hu_slice((40, 40)), slope=0.0)
  with pytest.raises(ct_io.InputFileError, match='flat.dcm: frame 0: RescaleSlope 0.0'):
    _read(path)


def test_unit_override_refuses_values_that_are_not_windowed(tmp_path):
  np.save(tmp_path / 'hu.npy', _hu_slice((40, 40)).astype(np.float32))
  with pytest.raises(ct_io.InputFileError, match='hu.npy: values in'):
    _read(str(tmp_path / 'hu.npy'), intensity='unit')


def test_find_inputs_reports_missing_and_unknown_paths_and_keeps_the_rest(tmp_path):
  np.save(tmp_path / 'ok.npy', np.zeros((32, 32), np.float32))
  (tmp_path / 'scan.jpg').write_bytes(b'\xff\xd8\xff')
  missing = str(tmp_path / 'missing.dcm')
  found = ct_io.find_inputs([missing, str(tmp_path / 'scan.jpg'), str(tmp_path / 'ok.npy'),
                             str(tmp_path)])
  assert found.files == [(str(tmp_path / 'ok.npy'), ct_io.NPY)]  # Listed once.
  messages = [str(e) for e in found.failures]
  assert messages[0] == f'{missing}: no such file or directory.'
  assert messages[1].startswith(f'{tmp_path / "scan.jpg"}: unknown file format')
  assert len(messages) == 2


def test_tiff_float_samples_are_slices_not_colour(tmp_path):
  stack = np.random.default_rng(8).uniform(0, 1, (3, 40, 40)).astype(np.float32)
  tifffile.imwrite(tmp_path / 'planes.tif', stack, photometric='rgb', planarconfig='separate')
  with pytest.warns(ct_io.AssumedIntensityWarning, match='read as 3 slices'):
    slices = _read(str(tmp_path / 'planes.tif'))
  assert [s.index for s in slices] == [0, 1, 2]
  for ct_slice, plane in zip(slices, stack):
    np.testing.assert_array_equal(ct_slice.pixels, plane)
