"""An independent CT scanner for the real-CT transfer benchmark: no mdiqa_jax code.

The benchmark asks whether a model trained on the project's own simulator
ranks real slices that another simulator degraded. This module is that other
simulator, so it imports nothing from mdiqa_jax: pydicom reads and writes the
files, scikit-image's `radon` / `iradon` project and reconstruct.

  read_source_slices(path)          a DICOM file's frames as HU + pixel spacing
  project(hu, pixel_mm, angles)     noise-free parallel-beam line integrals
  add_poisson_noise(...)            photon counts -> noisy line integrals
  reconstruct(...)                  filtered back-projection -> HU
  soft_tissue_roi, noise_std_hu     where and how much noise was added
  write_ct_dicom(path, hu, ...)     int16 CT Image Storage file

Physics: HU -> linear attenuation mu = mu_water (1 + HU / 1000) (clipped at
0: the air of the scan, and the padding outside a scanner's field of view at
-2000 HU or below), in 1/pixel units (mu in 1/mm times the pixel spacing) so
that radon's sums over pixels are line integrals p (dimensionless). A view
of a ray records Poisson(I0 x dose x exp(-p)) photons; -log(counts / (I0 x
dose)) is the noisy line integral. Every view gets the same photons, so a
sparse scan (fewer views) also has less total dose, as in LDCTIQAC2023.
"""
import dataclasses
from typing import Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage
from skimage.transform import iradon, radon

# Linear attenuation of water at a CT beam's effective energy (~70 keV), 1/mm.
MU_WATER_PER_MM = 0.0192
# Stored value = HU - RESCALE_INTERCEPT in the written int16 files.
RESCALE_INTERCEPT = -1024.0
# Soft tissue (muscle, organs, brain, blood), HU, after smoothing away the
# source's own noise; the ROI keeps ROI_MARGIN_MM away from any other tissue.
SOFT_TISSUE_HU = (-20.0, 120.0)
ROI_MARGIN_MM = 2.0


@dataclasses.dataclass(frozen=True)
class SourceSlice:
  """One frame of a real CT file.

  Attributes:
    name: short label, the file's stem plus '[frame]' for multi-frame files.
    path: the DICOM file.
    frame: frame index within the file (0 for single-frame files).
    hu: (H, W) float64, Hounsfield units.
    pixel_mm: pixel spacing, mm (rows and columns are equal).
  """
  name: str
  path: str
  frame: int
  hu: np.ndarray
  pixel_mm: float


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Optional[Dataset]:
  """First item of `sequence` in the frame's functional group, else the shared one."""
  for groups, index in (('PerFrameFunctionalGroupsSequence', frame),
                        ('SharedFunctionalGroupsSequence', 0)):
    items = ds.get(groups)
    if items is not None and len(items) > index and items[index].get(sequence):
      return items[index].get(sequence)[0]
  return None


def _rescale(ds: Dataset, frame: int) -> tuple[float, float]:
  """(slope, intercept) to HU: enhanced CT functional groups first, then the top level."""
  item = _frame_item(ds, frame, 'PixelValueTransformationSequence')
  source = item if item is not None and 'RescaleSlope' in item else ds
  return float(source.get('RescaleSlope', 1.0)), float(source.get('RescaleIntercept', 0.0))


def _pixel_mm(path: str, ds: Dataset, frame: int) -> float:
  """PixelSpacing (enhanced CT: PixelMeasuresSequence), mm; square pixels only."""
  item = _frame_item(ds, frame, 'PixelMeasuresSequence')
  spacing = (item if item is not None and 'PixelSpacing' in item else ds).get('PixelSpacing')
  if spacing is None or len(spacing) != 2 or float(spacing[0]) != float(spacing[1]):
    raise ValueError(f'{path} frame {frame}: PixelSpacing {spacing}; expected two equal '
                     'values (radon assumes square pixels).')
  return float(spacing[0])


def read_source_slices(path: str, stem: str) -> list[SourceSlice]:
  """Every frame of a CT DICOM file, in HU with its pixel spacing.

  Args:
    path: a single-frame CT or multi-frame enhanced CT file.
    stem: the name the slices get ('stem', or 'stem[frame]' for multi-frame files).
  """
  ds = pydicom.dcmread(path)
  num_frames = int(ds.get('NumberOfFrames', 1) or 1)
  stored = np.asarray(ds.pixel_array).reshape((num_frames,) + (ds.Rows, ds.Columns))
  slices = []
  for frame in range(num_frames):
    slope, intercept = _rescale(ds, frame)
    slices.append(SourceSlice(
        name=f'{stem}[{frame}]' if num_frames > 1 else stem, path=path, frame=frame,
        hu=stored[frame].astype(np.float64) * slope + intercept,
        pixel_mm=_pixel_mm(path, ds, frame)))
  return slices


def view_angles(num_views: int) -> np.ndarray:
  """(num_views,) float64 degrees: a parallel-beam scan over 180 degrees."""
  return np.linspace(0.0, 180.0, num_views, endpoint=False)


def project(hu: np.ndarray, pixel_mm: float, angles: np.ndarray) -> np.ndarray:
  """Noise-free line integrals of a slice.

  Args:
    hu: (N, N) float, HU.
    pixel_mm: pixel spacing, mm.
    angles: (V,) degrees.

  Returns:
    (D, V) float64 line integrals of mu (dimensionless), D = ceil(N sqrt 2)
    detector bins (circle=False: the whole square is inside the scan).
  """
  mu_per_pixel = np.clip(MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0, None) * pixel_mm
  return radon(mu_per_pixel, theta=angles, circle=False)


def add_poisson_noise(line_integrals: np.ndarray, photons: float,
                      rng: np.random.Generator) -> np.ndarray:
  """Noisy line integrals from Poisson photon counts.

  Args:
    line_integrals: (D, V) noise-free line integrals p.
    photons: incident photons per ray and view (I0 x dose).
    rng: the noise source.

  Returns:
    (D, V) float64, -log(counts / photons), counts ~ Poisson(photons e^-p)
    (a ray with no photon counts one, so the log stays finite).
  """
  counts = rng.poisson(photons * np.exp(-line_integrals))
  return np.log(photons / np.maximum(counts, 1))


def reconstruct(line_integrals: np.ndarray, angles: np.ndarray, size: int, pixel_mm: float,
                filter_name: str) -> np.ndarray:
  """Filtered back-projection to HU.

  Args:
    line_integrals: (D, V) line integrals, one column per angle.
    angles: (V,) degrees.
    size: output side N, pixels.
    pixel_mm: pixel spacing, mm.
    filter_name: scikit-image's FBP filter ('ramp', 'shepp-logan', 'cosine',
      'hamming', 'hann').

  Returns:
    (N, N) float64, HU.
  """
  mu_per_pixel = iradon(line_integrals, theta=angles, output_size=size, circle=False,
                        filter_name=filter_name)
  return 1000.0 * (mu_per_pixel / (MU_WATER_PER_MM * pixel_mm) - 1.0)


def soft_tissue_roi(hu: np.ndarray, pixel_mm: float) -> np.ndarray:
  """(H, W) bool: soft tissue at least ROI_MARGIN_MM from anything else.

  The source is smoothed (sigma 1 px) first, so that its own noise does not
  punch holes in the mask; the margin keeps the FBP's blur of edges out of a
  noise measurement.
  """
  smooth = ndimage.gaussian_filter(hu, 1.0)
  tissue = (smooth >= SOFT_TISSUE_HU[0]) & (smooth <= SOFT_TISSUE_HU[1])
  margin = max(1, int(round(ROI_MARGIN_MM / pixel_mm)))
  return ndimage.binary_erosion(tissue, iterations=margin)


def noise_std_hu(image: np.ndarray, reference: np.ndarray, roi: np.ndarray) -> float:
  """Standard deviation of image - reference over the ROI, HU (noise plus streaks)."""
  return float(np.std((image - reference)[roi]))


def photons_for_noise(line_integrals: np.ndarray, angles: np.ndarray, size: int,
                      pixel_mm: float, filter_name: str, roi: np.ndarray,
                      target_noise_hu: float, rng: np.random.Generator,
                      trial_photons: float = 1e5) -> float:
  """I0 whose full-dose reconstruction has `target_noise_hu` of noise in the ROI.

  Like a scanner's automatic exposure control, each slice gets the photons its
  attenuation needs. Quantum noise variance scales as 1 / I0, so one trial
  scan at `trial_photons` (noise measured against the noise-free
  reconstruction, i.e. without the FBP's own error) fixes I0.
  """
  clean = reconstruct(line_integrals, angles, size, pixel_mm, filter_name)
  trial = reconstruct(add_poisson_noise(line_integrals, trial_photons, rng), angles, size,
                      pixel_mm, filter_name)
  return trial_photons * (noise_std_hu(trial, clean, roi) / target_noise_hu) ** 2


def write_ct_dicom(path: str, hu: np.ndarray, pixel_mm: float, *, description: str,
                   study_key: Sequence[str], instance_key: Sequence[str]) -> None:
  """Writes a slice as a CT Image Storage file: int16 stored values, HU = stored - 1024.

  Args:
    path: the .dcm file to write.
    hu: (H, W) float, HU (rounded; clipped to what int16 holds).
    pixel_mm: PixelSpacing, mm.
    description: SeriesDescription (what degradation this is).
    study_key: strings the StudyInstanceUID is derived from (one study per
      source slice).
    instance_key: strings the SeriesInstanceUID and SOPInstanceUID are derived
      from (every scan its own series). Derived UIDs: a rerun writes the same.
  """
  info = np.iinfo(np.int16)
  stored = np.clip(np.round(hu - RESCALE_INTERCEPT), info.min, info.max).astype('<i2')
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = CTImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=list(instance_key))
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = CTImageStorage
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.StudyInstanceUID = generate_uid(entropy_srcs=['study', *study_key])
  ds.SeriesInstanceUID = generate_uid(entropy_srcs=['series', *instance_key])
  ds.Modality = 'CT'
  ds.ImageType = ['DERIVED', 'SECONDARY']
  ds.PatientID = 'REAL_CT_TRANSFER'
  ds.SeriesDescription = description
  ds.InstanceNumber = 1
  ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
  ds.ImagePositionPatient = [0.0, 0.0, 0.0]
  ds.PixelSpacing = [pixel_mm, pixel_mm]
  ds.RescaleSlope = 1.0
  ds.RescaleIntercept = RESCALE_INTERCEPT
  ds.RescaleType = 'HU'
  ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
  ds.Rows, ds.Columns = stored.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME2'
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
  ds.PixelRepresentation = 1
  ds.PixelData = stored.tobytes()
  ds.save_as(path, enforce_file_format=True)
