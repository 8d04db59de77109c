"""CT intensities: Hounsfield units, linear attenuation, and the display window.

HU is defined relative to water and air: HU = 1000 * (mu - mu_water) / mu_water
(mu_air ~ 0). The simulator works in HU for anatomy, converts to linear
attenuation mu (1/mm) to compute line integrals, and converts reconstructions
back to HU.

`window_to_unit` is THE intensity normalisation of the project: the
LDCTIQAC2023 slices were released as float images already windowed to [0, 1]
with a soft-tissue window, so the synthetic builders, the real-data builder
and the predict command all map HU to [0, 1] with this one function. The
synthetic datasets store that window as uint8 (`unit_to_uint8`, 255 levels
over 350 HU: 1.4 HU steps, far below the noise).
"""
import numpy as np

# Linear attenuation of water at 70 keV, the effective energy of a 120 kVp
# abdominal CT beam: mass attenuation 0.1929 cm^2/g (NIST XCOM) times
# 1 g/cm^3 = 0.1929 /cm = 0.01929 /mm.
MU_WATER_PER_MM = 0.01929

# The challenge page gives the soft-tissue window as width 350 HU, level 40 HU
# (other descriptions of the data say 400 / 50; both are parameters).
WINDOW_WIDTH_HU = 350.0
WINDOW_LEVEL_HU = 40.0


def hu_to_attenuation(hu: np.ndarray,
                      mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
  """Returns linear attenuation mu (1/mm) of an image in HU (same shape).

  mu = mu_water * (1 + HU / 1000); air (-1000 HU) maps to 0.
  """
  return mu_water * (1.0 + np.asarray(hu) / 1000.0)


def attenuation_to_hu(mu: np.ndarray,
                      mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
  """Inverse of `hu_to_attenuation`: HU of an image of mu in 1/mm."""
  return 1000.0 * (np.asarray(mu) / mu_water - 1.0)


def window_to_unit(hu: np.ndarray, width: float = WINDOW_WIDTH_HU,
                   level: float = WINDOW_LEVEL_HU) -> np.ndarray:
  """Maps HU to display intensities in [0, 1] with a linear window.

  Args:
    hu: any shape, HU.
    width: window width, HU (> 0).
    level: window centre, HU.

  Returns:
    float32 array of the same shape: (hu - (level - width / 2)) / width,
    clipped to [0, 1]; level - width / 2 maps to 0 (black) and
    level + width / 2 to 1 (white).
  """
  if not width > 0:
    raise ValueError(f'window width must be > 0 HU, got {width}.')
  low = level - width / 2.0
  unit = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width)
  return np.clip(unit, 0.0, 1.0).astype(np.float32)


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
  """Stores display intensities compactly: round(255 * unit) as uint8.

  Args:
    unit: any shape, in [0, 1] (`window_to_unit`).

  Returns:
    uint8 array of the same shape; unit = value / 255 to within 1 / 510.
  """
  return np.round(np.clip(np.asarray(unit, np.float32), 0.0, 1.0) *
                  np.float32(255.0)).astype(np.uint8)
