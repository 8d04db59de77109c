"""A corpus of bad and odd input files, written by the test that uses it.

  write_corpus(root) -> [Case]     every case, its files under root/<format>/

Each `Case` names what mdiqa-predict must make of it: `scored` slices (a
good or odd-but-readable file, possibly with a note) or an `error` row whose
message holds the given words. Hostile headers declare sizes far beyond what
a reader may allocate (`io.slices.MAX_PIXELS_PER_FILE`), so reading them
must be refused before any allocation.
"""
import dataclasses
import os
import struct
import zlib
from typing import List, Optional

import numpy as np
import numpy.lib.format as npy_format
import pydicom
import tifffile
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (CTImageStorage, DeflatedExplicitVRLittleEndian,
                         EnhancedCTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, RLELossless,
                         generate_uid)

SIDE = 64


@dataclasses.dataclass(frozen=True)
class Case:
  """One corpus entry.

  Attributes:
    name: short label (unique).
    path: the file or folder, inside the corpus (or named on the command line).
    error: words the error row of `path` must hold; None for a scored case.
    slices: slices a scored case yields.
    note: words the note of a scored case must hold (None: any note).
    named: given on the command line by itself (not found by walking the corpus).
  """
  name: str
  path: str
  error: Optional[str] = None
  slices: int = 1
  note: Optional[str] = None
  named: bool = False


def _hu(seed: int, shape=(SIDE, SIDE)) -> np.ndarray:
  """Integer HU of a CT-like slice: a noisy soft-tissue ellipse in air."""
  rows, cols = np.mgrid[:shape[0], :shape[1]]
  inside = (((rows - shape[0] / 2) / (0.4 * shape[0])) ** 2 +
            ((cols - shape[1] / 2) / (0.4 * shape[1])) ** 2) < 1
  noise = np.random.default_rng(seed).normal(0.0, 30.0, shape)
  return np.round(np.where(inside, 40.0 + noise, -1000.0)).astype(np.int16)


def _unit(seed: int, shape=(SIDE, SIDE)) -> np.ndarray:
  return np.clip((_hu(seed, shape) + 135.0) / 350.0, 0.0, 1.0).astype(np.float32)


# --- DICOM -------------------------------------------------------------------


def _dicom(stored: np.ndarray, *, sop_class=CTImageStorage, syntax=ExplicitVRLittleEndian,
           series_uid: str = '1.2.826.0.1.3680043.8.498.77', z_mm: float = 0.0,
           instance: int = 1) -> Dataset:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = sop_class
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = syntax
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = 'CT'
  ds.SeriesInstanceUID = series_uid
  ds.InstanceNumber = instance
  ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
  ds.ImagePositionPatient = [-100.0, -100.0, z_mm]
  ds.PixelSpacing = [0.7, 0.7]
  ds.RescaleSlope = 1
  ds.RescaleIntercept = 0
  ds.Rows, ds.Columns = stored.shape[-2:]
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME2'
  ds.BitsAllocated = 8 * stored.dtype.itemsize
  ds.BitsStored = ds.BitsAllocated
  ds.HighBit = ds.BitsAllocated - 1
  ds.PixelRepresentation = 1 if stored.dtype.kind == 'i' else 0
  ds.PixelData = np.ascontiguousarray(stored.astype(stored.dtype.newbyteorder('<'))).tobytes()
  return ds


def _save(ds: Dataset, path: str) -> str:
  ds.save_as(path, enforce_file_format=True)
  return path


def _raw(ds: Dataset, keyword: str, vr: str, value) -> None:
  """Sets a value pydicom would refuse to build (as read from a bad file)."""
  tag = pydicom.datadict.tag_for_keyword(keyword)
  ds[tag] = DataElement(tag, vr, value, already_converted=True)


def _encapsulated(ds: Dataset, syntax, fragment: bytes) -> Dataset:
  ds.file_meta.TransferSyntaxUID = syntax
  ds.PixelData = encapsulate([fragment])
  ds['PixelData'].VR = 'OB'
  ds['PixelData'].is_undefined_length = True
  return ds


def _cut(path: str, keep: int) -> str:
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:keep])
  return path


def _dicom_cases(folder: str) -> List[Case]:
  os.makedirs(os.path.join(folder, 'series'))
  at = lambda name: os.path.join(folder, name)  # pylint: disable=unnecessary-lambda-assignment
  cases = [Case('dicom good', _save(_dicom(_hu(0)), at('good.dcm')))]
  for z in (5.0, 0.0, 10.0):  # Listed out of order; read as one series.
    _save(_dicom(_hu(int(z)), series_uid='1.2.826.0.1.3680043.8.498.78', z_mm=z,
                 instance=int(z)), at(f'series/IM{int(z):02d}'))
  cases += [Case(f'dicom series slice z={z}', at(f'series/IM{int(z):02d}'))
            for z in (0.0, 5.0, 10.0)]

  ds = _dicom(_hu(1))
  ds.NumberOfFrames = 3
  cases.append(Case('dicom NumberOfFrames above its pixel data',
                    _save(ds, at('frames_too_many.dcm')), error='truncated or its header'))
  ds = _dicom(_hu(1))
  ds.NumberOfFrames = 0
  cases.append(Case('dicom NumberOfFrames 0', _save(ds, at('frames_zero.dcm')),
                    error='NumberOfFrames is 0'))
  ds = _dicom(_hu(1))
  ds.NumberOfFrames = 10 ** 6
  cases.append(Case('dicom NumberOfFrames a million', _save(ds, at('frames_million.dcm')),
                    error='more than the'))
  ds = _dicom(_hu(1))
  ds.Rows = ds.Columns = 60000
  cases.append(Case('dicom Rows x Columns 60000', _save(ds, at('huge_rows.dcm')),
                    error='more than the'))
  ds = _dicom(_hu(2))
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
  cases.append(Case('dicom BitsAllocated 8 on 16-bit data', _save(ds, at('bits8.dcm')),
                    error='BitsAllocated 8'))
  ds = _dicom(_hu(2))
  ds.BitsAllocated = 12
  cases.append(Case('dicom BitsAllocated 12', _save(ds, at('bits12.dcm')),
                    error='BitsAllocated is 12'))
  ds = _dicom(_hu(3))
  _raw(ds, 'RescaleSlope', 'DS', 'abc')
  cases.append(Case("dicom RescaleSlope 'abc'", _save(ds, at('slope_abc.dcm')),
                    error="RescaleSlope is 'abc'"))
  ds = _dicom(_hu(3))
  _raw(ds, 'RescaleSlope', 'DS', '')
  cases.append(Case('dicom RescaleSlope empty', _save(ds, at('slope_empty.dcm')),
                    note='RescaleSlope is empty'))
  ds = _dicom(_hu(3))
  ds.RescaleSlope = 0
  cases.append(Case('dicom RescaleSlope 0', _save(ds, at('slope_zero.dcm')),
                    error='RescaleSlope 0'))
  ds = _dicom(_hu(4))
  _raw(ds, 'SamplesPerPixel', 'US', None)
  cases.append(Case('dicom SamplesPerPixel empty', _save(ds, at('samples_empty.dcm')),
                    error='SamplesPerPixel is None'))
  ds = _dicom(np.repeat(_hu(4)[..., None], 3, axis=-1).astype(np.uint16))
  ds.Rows, ds.Columns = SIDE, SIDE
  ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, 'RGB', 0
  cases.append(Case('dicom RGB', _save(ds, at('rgb.dcm')), error='3 samples per pixel'))
  ds = _dicom(_hu(4).astype(np.uint16) % 256)
  ds.PhotometricInterpretation = 'PALETTE COLOR'
  cases.append(Case('dicom PALETTE COLOR', _save(ds, at('palette.dcm')),
                    error="PhotometricInterpretation 'PALETTE COLOR'"))
  ds = _dicom(_hu(5))
  ds.PixelRepresentation = 0  # Signed values (air at -1000) stored as unsigned.
  cases.append(Case('dicom signed data marked unsigned', _save(ds, at('unsigned_lie.dcm')),
                    error='not CT values'))
  # Series members with malformed ordering attributes: ordered by what remains.
  for name, keyword, vr, value in (('instance_abc', 'InstanceNumber', 'IS', 'abc'),
                                   ('position_abc', 'ImagePositionPatient', 'DS', 'abc')):
    ds = _dicom(_hu(6), series_uid=f'1.2.826.0.1.3680043.8.498.8{len(name)}')
    _raw(ds, keyword, vr, value)
    cases.append(Case(f'dicom {keyword} {value!r}', _save(ds, at(f'{name}.dcm'))))
  path = _save(_dicom(_hu(7)), at('truncated_pixels.dcm'))
  cases.append(Case('dicom cut inside its pixel data', _cut(path, os.path.getsize(path) - 3000),
                    error='truncated'))
  path = _save(_dicom(_hu(7)), at('truncated_header.dcm'))
  cases.append(Case('dicom cut inside its header', _cut(path, 200), error='DICOM'))
  path = _save(_dicom(_hu(7)), at('padded.dcm'))
  with open(path, 'ab') as f:
    f.truncate(200 << 20)  # 200 MB of (sparse) trailing zeros.
  cases.append(Case('dicom padded to 200 MB', path, error='it is not read'))
  ds = _dicom(_hu(7))
  del ds.PixelData
  cases.append(Case('dicom image header without pixel data', _save(ds, at('no_pixels.dcm')),
                    error='holds no pixel data'))
  report = _dicom(_hu(7), sop_class='1.2.840.10008.5.1.4.1.1.88.11')
  for keyword in ('PixelData', 'Rows', 'Columns', 'BitsAllocated', 'SamplesPerPixel',
                  'PhotometricInterpretation', 'PixelRepresentation', 'BitsStored', 'HighBit'):
    delattr(report, keyword)
  report.Modality = 'SR'
  cases.append(Case('dicom structured report', _save(report, at('report.dcm')),
                    error='without pixel data'))
  cases.append(Case('dicom RLE lossless', _save(_encapsulate_rle(_hu(8)), at('rle.dcm'))))
  cases.append(Case('dicom deflated', _save(_dicom(_hu(8), syntax=DeflatedExplicitVRLittleEndian),
                                             at('deflated.dcm'))))
  cases.append(Case('dicom JPEG 2000 with garbage data', _save(_encapsulated(
      _dicom(_hu(9)), JPEG2000Lossless, b'\xff\x4f\xff\x51' + bytes(100)), at('j2k.dcm')),
                    error='cannot decode the DICOM pixel data'))
  cases.append(Case('dicom JPEG baseline with garbage data', _save(_encapsulated(
      _dicom(_hu(9).astype(np.uint16) % 256), JPEGBaseline8Bit, b'\xff\xd8' + bytes(100)),
      at('jpeg.dcm')), error='cannot decode the DICOM pixel data'))
  for syntax, name in ((JPEGLSLossless, 'jpegls.dcm'), (JPEGLosslessSV1, 'jpeg_lossless.dcm')):
    cases.append(Case(f'dicom {syntax.name} (no decoder installed)', _save(_encapsulated(
        _dicom(_hu(9)), syntax, b'\xff\xd8' + bytes(100)), at(name)),
                      error='no decoder for it is installed'))
  ds = _dicom(_hu(10))
  ds.Modality = 'MR'
  cases.append(Case('dicom MR', _save(ds, at('mr.dcm')), note="Modality 'MR'"))
  ds = _dicom(_hu(10))
  del ds.PixelSpacing
  cases.append(Case('dicom without PixelSpacing', _save(ds, at('no_spacing.dcm')),
                    note='no pixel spacing in the file'))
  ds = _dicom(_hu(10))
  ds.PixelSpacing = [1000.0, 1000.0]
  cases.append(Case('dicom PixelSpacing 1000 mm', _save(ds, at('spacing_1000.dcm')),
                    error='is the spacing right'))
  ds = _dicom(_hu(10)[:16, :16])
  cases.append(Case('dicom 16 x 16', _save(ds, at('tiny.dcm')), error='expected at least'))
  ds = _dicom(_hu(11))
  ds.ModalityLUTSequence = Sequence([Dataset()])
  cases.append(Case('dicom Modality LUT Sequence', _save(ds, at('modality_lut.dcm')),
                    error='Modality LUT Sequence'))
  ds = _dicom(np.stack([_hu(12), _hu(13)]), sop_class=EnhancedCTImageStorage)
  ds.NumberOfFrames = 2
  cases.append(Case('dicom two frames', _save(ds, at('two_frames.dcm')), slices=2))
  with open(at('text.dcm'), 'w', encoding='utf-8') as f:
    f.write('not a DICOM file\n')
  cases.append(Case('dicom text file', at('text.dcm'), error='not a DICOM file'))
  open(at('empty.dcm'), 'wb').close()
  cases.append(Case('dicom empty file', at('empty.dcm'), error='DICOM'))
  return cases


def _encapsulate_rle(stored: np.ndarray) -> Dataset:
  ds = _dicom(stored)
  ds.compress(RLELossless)
  return ds


# --- TIFF --------------------------------------------------------------------


def _patch_tiff_tag(path: str, tag_name: str, value: int) -> str:
  """Rewrites a SHORT / LONG tag value in place (a header that lies)."""
  with tifffile.TiffFile(path) as tif:
    tag = tif.pages[0].tags[tag_name]
    offset, code = tag.valueoffset, tag.dtype
  data = bytearray(open(path, 'rb').read())
  struct.pack_into('<H' if int(code) == 3 else '<I', data, offset, value)
  with open(path, 'wb') as f:
    f.write(bytes(data))
  return path


def _tiff_cases(folder: str) -> List[Case]:
  at = lambda name: os.path.join(folder, name)  # pylint: disable=unnecessary-lambda-assignment
  tifffile.imwrite(at('good.tif'), _unit(20))
  cases = [Case('tiff float windowed', at('good.tif'))]
  tifffile.imwrite(at('stack4.tif'), np.stack([_unit(s) for s in range(21, 25)]))
  # tifffile stores this as planar RGB (it says it will store separate pages
  # one day): 4 slices either way.
  cases.append(Case('tiff (4, H, W) float stack written by plain imwrite', at('stack4.tif'),
                    slices=4))
  tifffile.imwrite(at('pages.tif'), np.stack([_hu(s) for s in range(3)]),
                   photometric='minisblack')
  cases.append(Case('tiff three int16 pages', at('pages.tif'), slices=3))
  tifffile.imwrite(at('u16.tif'), (_unit(25) * 65535).astype(np.uint16))
  cases.append(Case('tiff uint16', at('u16.tif'), note='no HU information'))
  tifffile.imwrite(at('hu_float.tif'), _hu(26).astype(np.float64))
  cases.append(Case('tiff float64 HU', at('hu_float.tif')))
  tifffile.imwrite(at('deflate.tif'), _unit(27), compression='zlib')
  cases.append(Case('tiff deflate-compressed', at('deflate.tif')))
  grey = (_unit(28) * 255).astype(np.uint8)
  tifffile.imwrite(at('rgb_grey.tif'), np.repeat(grey[..., None], 3, -1), photometric='rgb')
  cases.append(Case('tiff RGB holding grey', at('rgb_grey.tif'), note='no HU information'))
  colour = np.repeat(grey[..., None], 3, -1)
  colour[..., 0] = 255 - colour[..., 0]
  tifffile.imwrite(at('colour.tif'), colour, photometric='rgb')
  cases.append(Case('tiff colour', at('colour.tif'), error='colour image'))
  tifffile.imwrite(at('zstd.tif'), _unit(29))
  cases.append(Case('tiff ZSTD without a decoder',
                    _patch_tiff_tag(at('zstd.tif'), 'Compression', 50000),
                    error='ZSTD-compressed TIFF: no decoder'))
  tifffile.imwrite(at('huge.tif'), _unit(30))
  _patch_tiff_tag(at('huge.tif'), 'ImageWidth', 100000)
  cases.append(Case('tiff header declaring 100000 x 64', at('huge.tif'),
                    error='cannot read as a TIFF'))
  tifffile.imwrite(at('huge_both.tif'), _unit(30))
  _patch_tiff_tag(at('huge_both.tif'), 'ImageWidth', 100000)
  _patch_tiff_tag(at('huge_both.tif'), 'ImageLength', 100000)
  cases.append(Case('tiff header declaring 100000 x 100000', at('huge_both.tif'),
                    error='more than the'))
  tifffile.imwrite(at('truncated.tif'), _unit(31))
  cases.append(Case('tiff cut in half', _cut(at('truncated.tif'),
                                             os.path.getsize(at('truncated.tif')) // 2),
                    error='truncated'))
  nan = _unit(32)
  nan[5, 5] = np.nan
  tifffile.imwrite(at('nan.tif'), nan)
  cases.append(Case('tiff with NaN', at('nan.tif'), error='NaN/inf'))
  tifffile.imwrite(at('complex.tif'), _unit(33).astype(np.complex64))
  cases.append(Case('tiff complex', at('complex.tif'), error='pixel type complex64'))
  tifffile.imwrite(at('icon.tif'), _unit(34)[:8, :8])
  cases.append(Case('tiff 8 x 8', at('icon.tif'), error='expected at least'))
  with open(at('text.tif'), 'w', encoding='utf-8') as f:
    f.write('not a TIFF\n')
  cases.append(Case('tiff text file', at('text.tif'), error='cannot read as a TIFF'))
  open(at('empty.tiff'), 'wb').close()
  cases.append(Case('tiff empty file', at('empty.tiff'), error='cannot read as a TIFF'))
  return cases


# --- PNG ---------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return (struct.pack('>I', len(data)) + kind + data +
          struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))


def _png(path: str, width: int, height: int, rows: bytes) -> str:
  """A greyscale 8-bit PNG whose header says width x height, holding `rows`."""
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' +
            _png_chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)) +
            _png_chunk(b'IDAT', zlib.compress(rows, 9)) + _png_chunk(b'IEND', b''))
  return path


def _png_cases(folder: str) -> List[Case]:
  at = lambda name: os.path.join(folder, name)  # pylint: disable=unnecessary-lambda-assignment
  grey = (_unit(40) * 255).astype(np.uint8)
  Image.fromarray(grey).save(at('good8.png'))
  cases = [Case('png 8-bit grey', at('good8.png'), note='no HU information')]
  Image.fromarray((_unit(41) * 65535).astype(np.uint16)).save(at('good16.png'))
  cases.append(Case('png 16-bit grey', at('good16.png'), note='no HU information'))
  Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(at('rgb_grey.png'))
  cases.append(Case('png RGB holding grey', at('rgb_grey.png')))
  Image.fromarray(grey).convert('LA').save(at('grey_alpha.png'))
  cases.append(Case('png grey + alpha', at('grey_alpha.png')))
  Image.fromarray(grey).convert('P').save(at('palette_grey.png'))
  cases.append(Case('png palette holding grey', at('palette_grey.png')))
  colour = np.repeat(grey[..., None], 3, -1)
  colour[..., 2] = 0
  Image.fromarray(colour).save(at('colour.png'))
  cases.append(Case('png colour', at('colour.png'), error='colour image'))
  Image.fromarray(grey > 128).save(at('bilevel.png'))
  cases.append(Case('png bilevel', at('bilevel.png'), error='bilevel'))
  cases.append(Case('png declaring 10000 x 10000 (a decompression bomb)',
                    _png(at('bomb.png'), 10000, 10000, bytes(10000 * 10001)),
                    error='more than the'))
  cases.append(Case('png declaring 8000 x 8000 holding 4 rows',
                    _png(at('four_rows.png'), 8000, 8000, bytes(4 * 8001)),
                    error='the file is truncated'))
  cases.append(Case('png declaring 512 x 512 holding 4 rows',
                    _png(at('short.png'), 512, 512, bytes(4 * 513)),
                    error='the file is truncated'))
  Image.fromarray(grey).save(at('cut.png'))
  cases.append(Case('png cut in half', _cut(at('cut.png'), os.path.getsize(at('cut.png')) // 2),
                    error='cannot read as a PNG'))
  data = bytearray(open(at('good8.png'), 'rb').read())
  data[40] ^= 0xFF  # Inside IDAT: its CRC no longer matches.
  with open(at('bad_crc.png'), 'wb') as f:
    f.write(bytes(data))
  cases.append(Case('png with a corrupt chunk', at('bad_crc.png'), error='PNG'))
  Image.fromarray(grey).save(at('jpeg_named.png'), format='JPEG')
  cases.append(Case('png that is a JPEG', at('jpeg_named.png'), error='a JPEG image'))
  Image.fromarray(grey[:10, :10]).save(at('icon.png'))
  cases.append(Case('png 10 x 10', at('icon.png'), error='expected at least'))
  open(at('empty.png'), 'wb').close()
  cases.append(Case('png empty file', at('empty.png'), error='cannot read as a PNG'))
  return cases


# --- NumPy -------------------------------------------------------------------


def _npy_header_only(path: str, shape, descr: str, data_bytes: int = 128) -> str:
  with open(path, 'wb') as f:
    npy_format.write_array_header_1_0(f, {'descr': descr, 'fortran_order': False,
                                          'shape': shape})
    f.write(bytes(data_bytes))
  return path


def _npy_cases(folder: str) -> List[Case]:
  at = lambda name: os.path.join(folder, name)  # pylint: disable=unnecessary-lambda-assignment
  np.save(at('hu.npy'), _hu(50))
  cases = [Case('npy int16 HU', at('hu.npy'))]
  np.save(at('unit.npy'), _unit(51))
  cases.append(Case('npy float windowed', at('unit.npy')))
  np.save(at('stack.npy'), np.stack([_hu(s) for s in range(3)]))
  cases.append(Case('npy stack of 3', at('stack.npy'), slices=3))
  np.save(at('fortran.npy'), np.asfortranarray(_hu(52)))
  cases.append(Case('npy Fortran order', at('fortran.npy')))
  np.save(at('big_endian.npy'), _unit(53).astype('>f4'))
  cases.append(Case('npy big-endian', at('big_endian.npy')))
  np.save(at('float16.npy'), _unit(54).astype(np.float16))
  cases.append(Case('npy float16', at('float16.npy')))
  np.save(at('uint8.npy'), (_unit(55) * 255).astype(np.uint8))
  cases.append(Case('npy uint8', at('uint8.npy'), note='no HU information'))
  np.save(at('channel.npy'), _unit(56)[..., None])
  cases.append(Case('npy (H, W, 1)', at('channel.npy')))
  cases.append(Case('npy header declaring 60000 x 60000 float64',
                    _npy_header_only(at('huge.npy'), (60000, 60000), '<f8'),
                    error='more than the'))
  cases.append(Case('npy header declaring more bytes than the file holds',
                    _npy_header_only(at('short.npy'), (3, SIDE, SIDE), '<f4'),
                    error='the file is truncated'))
  cases.append(Case('npy header declaring a negative size',
                    _npy_header_only(at('negative.npy'), (-5, SIDE), '<f4'),
                    error='npy'))
  np.save(at('objects.npy'), np.array([{'pickled': True}], dtype=object), allow_pickle=True)
  cases.append(Case('npy of Python objects', at('objects.npy'), error='Python objects'))
  np.save(at('structured.npy'), np.zeros((SIDE, SIDE), dtype=[('a', '<f4'), ('b', '<i2')]))
  cases.append(Case('npy structured dtype', at('structured.npy'), error='pixel type'))
  np.save(at('complex.npy'), _unit(57).astype(np.complex64))
  cases.append(Case('npy complex', at('complex.npy'), error='pixel type complex64'))
  np.save(at('bool.npy'), _unit(58) > 0.5)
  cases.append(Case('npy bool', at('bool.npy'), error='pixel type bool'))
  np.save(at('strings.npy'), np.full((SIDE, SIDE), 'x'))
  cases.append(Case('npy strings', at('strings.npy'), error='pixel type'))
  np.save(at('line.npy'), np.zeros(SIDE, np.float32))
  cases.append(Case('npy 1-D', at('line.npy'), error='expected a slice'))
  np.save(at('four_d.npy'), np.zeros((2, 2, SIDE, SIDE), np.float32))
  cases.append(Case('npy 4-D', at('four_d.npy'), error='expected a slice'))
  np.save(at('empty_stack.npy'), np.zeros((0, SIDE, SIDE), np.float32))
  cases.append(Case('npy empty stack', at('empty_stack.npy'), error='empty stack'))
  inf = _unit(59)
  inf[0, 0] = np.inf
  np.save(at('inf.npy'), inf)
  cases.append(Case('npy with inf', at('inf.npy'), error='NaN/inf'))
  np.save(at('cut.npy'), _unit(60))
  cases.append(Case('npy cut in half', _cut(at('cut.npy'), os.path.getsize(at('cut.npy')) // 2),
                    error='the file is truncated'))
  with open(at('garbage.npy'), 'wb') as f:
    f.write(np.random.default_rng(61).bytes(200))
  cases.append(Case('npy random bytes', at('garbage.npy'), error='not a .npy file'))
  with open(at('bad_header.npy'), 'wb') as f:
    f.write(b'\x93NUMPY\x01\x00\x10\x00{garbage: here}\n' + bytes(64))
  cases.append(Case('npy garbled header', at('bad_header.npy'), error='cannot read as a .npy'))
  np.savez(at('archive.npz'), image=_unit(62))
  os.rename(at('archive.npz'), at('archive.npy'))
  cases.append(Case('npz named .npy', at('archive.npy'), error='not a .npy file'))
  open(at('empty.npy'), 'wb').close()
  cases.append(Case('npy empty file', at('empty.npy'), error='not a .npy file'))
  return cases


# --- Folders and odd paths -----------------------------------------------------


def _folder_cases(root: str, elsewhere: str) -> List[Case]:
  folder = os.path.join(root, 'folders')
  os.makedirs(os.path.join(folder, 'a'))
  at = lambda name: os.path.join(folder, name)  # pylint: disable=unnecessary-lambda-assignment
  np.save(at('a/x.npy'), _hu(70))
  np.save(at('a__x.npy'), _hu(71))
  np.save(at('x.npy'), _hu(72))
  _save(_dicom(_hu(73), series_uid='1.2.826.0.1.3680043.8.498.90'), at('x.dcm'))
  cases = [Case('folder a/x.npy', at('a/x.npy')), Case('folder a__x.npy', at('a__x.npy')),
           Case('folder x.npy', at('x.npy')), Case('folder x.dcm beside x.npy', at('x.dcm'))]
  np.save(at('odd name, with "quotes" and ü.npy'), _hu(74))
  cases.append(Case('folder file name with comma, quotes, umlaut',
                    at('odd name, with "quotes" and ü.npy')))
  os.mkfifo(at('fifo.dcm'))
  os.mkfifo(at('fifo_no_extension'))
  os.symlink(at('missing.npy'), at('broken_link.npy'))
  os.symlink(folder, at('loop'))  # A link to its own folder: not followed.
  os.makedirs(at('.hidden'))
  np.save(at('.hidden/secret.npy'), np.full((SIDE, SIDE), np.nan, np.float32))
  with open(at('readme.txt'), 'w', encoding='utf-8') as f:
    f.write('not an image\n')
  os.makedirs(at('looks_like.dcm'))
  # Named on the command line by themselves.
  os.mkfifo(os.path.join(elsewhere, 'named_fifo.npy'))
  cases.append(Case('FIFO named on the command line', os.path.join(elsewhere, 'named_fifo.npy'),
                    error='a FIFO, not a regular file', named=True))
  cases.append(Case('/dev/zero named on the command line', '/dev/zero',
                    error='a character device, not a regular file', named=True))
  cases.append(Case('missing path', os.path.join(elsewhere, 'no_such_scan.dcm'),
                    error='no such file or directory', named=True))
  with open(os.path.join(elsewhere, 'scan.jpg'), 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0')
  cases.append(Case('unsupported file named on the command line',
                    os.path.join(elsewhere, 'scan.jpg'), error='unknown file format',
                    named=True))
  return cases


def write_corpus(root: str) -> List[Case]:
  """Writes every case under root (DICOM, TIFF, PNG, NPY, folders); returns them.

  Files found by walking `root/corpus` are one predict call's folder input;
  the `named` cases (a FIFO, /dev/zero, a missing path, an unsupported file)
  are listed on the same command line; `root/elsewhere` holds those.
  """
  corpus, elsewhere = os.path.join(root, 'corpus'), os.path.join(root, 'elsewhere')
  cases = []
  for name, build in (('dicom', _dicom_cases), ('tiff', _tiff_cases), ('png', _png_cases),
                      ('npy', _npy_cases)):
    os.makedirs(os.path.join(corpus, name))
    cases += build(os.path.join(corpus, name))
  os.makedirs(elsewhere)
  cases += _folder_cases(corpus, elsewhere)
  names = [case.name for case in cases]
  assert len(set(names)) == len(names), 'case names must be unique'
  return cases
