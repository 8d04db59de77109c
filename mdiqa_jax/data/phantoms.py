"""Randomised digital abdominal and thoracic phantoms (axial slices in HU).

A `Patient` is a list of `Shape`s drawn once from a seed: smooth star-shaped
blobs (an ellipse whose radius is modulated by a few low harmonics) tagged
with a tissue, painted in order (later shapes cover earlier ones), so organs
may nest (cortex / medulla, bowel wall / content) and be clipped to a region
(organs stay inside the body cavity, lesions inside the liver, vessels inside
the lungs). Each shape moves and grows linearly along z and may end (an
ellipsoidal z profile), so the slices of one patient are neighbouring
cross-sections of the same anatomy; liver lesions are spheres.

`sample_patient`: an abdomen at about L1-L2, portal-venous contrast phase
(the Mayo low-dose scans behind LDCTIQAC2023): skin, subcutaneous fat,
abdominal wall muscle, rectus abdominis, paraspinal and psoas muscles,
visceral fat, liver (with vessels and 0-3 low-contrast lesions of
+-10..30 HU), spleen, kidneys (cortex and sinus), pancreas, stomach (with an
air-fluid level), small-bowel loops (gas or fluid), colon (stool with gas),
aorta, inferior vena cava, vertebra (cortical shell, trabecular body, canal,
posterior elements), ribs, and the scanner couch.

`sample_thorax_patient`: a chest at about T6-T8 (low-dose chest CT, the
commonest low-dose CT), with contrast in THORAX_CONTRAST_FRACTION of the
patients: skin, subcutaneous fat, chest-wall muscle with the pectoralis
major, two lungs (-850 HU, fine texture) holding 40-80 pulmonary vessels each
(1-4 mm radius, thicker near the hilum) and a few bronchi (air, thin wall),
the mediastinum's fat around the heart, ascending aorta, pulmonary trunk,
esophagus and descending aorta, the sternum, a thoracic vertebra, paraspinal
muscles, 5-8 ribs a side, the scapulae (thin bone plates in muscle) and the
couch; no lesions.

Tissue values are drawn per patient around textbook means, and smooth
Gaussian-filtered noise textures (per-tissue amplitude) make organs
non-flat. Patients vary in body size, fat thickness, organ sizes and
positions, and lesions.

Coordinates (mm): x to the image right (the patient's left, radiological
convention), y to the image top (anterior), z along the patient.
Rasterisation paints the pixel centres, then area-averages
`supersample`^2 sub-pixels in the pixels that a boundary may cross, so edges
have partial-volume values at the cost of a fraction of the pixels; tissue
masks mark pixels that are entirely one tissue (the "pure" pixels the
simulated readers use as ROIs).
"""
import dataclasses
from typing import Optional

import numpy as np
from scipy import fft

# Tissue: (mean HU, spread of the per-patient mean, texture std in HU,
#          texture field: 'smooth' (~4 mm grain) or 'fine' (~1.5 mm)).
TISSUES = {
    'air': (-1000.0, 0.0, 0.0, 'smooth'),
    'couch_shell': (250.0, 30.0, 5.0, 'smooth'),
    'couch_core': (-850.0, 30.0, 5.0, 'smooth'),
    'skin': (30.0, 10.0, 5.0, 'smooth'),
    'subcutaneous_fat': (-105.0, 10.0, 8.0, 'smooth'),
    'muscle': (52.0, 6.0, 8.0, 'smooth'),
    'visceral_fat': (-95.0, 10.0, 12.0, 'smooth'),
    'liver': (105.0, 15.0, 7.0, 'smooth'),
    'hepatic_vessel': (150.0, 20.0, 4.0, 'smooth'),
    'spleen': (115.0, 15.0, 6.0, 'smooth'),
    'kidney_cortex': (170.0, 25.0, 8.0, 'smooth'),
    'renal_sinus': (-40.0, 20.0, 15.0, 'smooth'),
    'pancreas': (90.0, 12.0, 10.0, 'smooth'),
    'stomach_wall': (70.0, 10.0, 6.0, 'smooth'),
    'stomach_fluid': (15.0, 8.0, 5.0, 'smooth'),
    'bowel_wall': (75.0, 10.0, 6.0, 'smooth'),
    'bowel_fluid': (20.0, 10.0, 6.0, 'smooth'),
    'gas': (-950.0, 30.0, 20.0, 'smooth'),
    'stool': (-60.0, 40.0, 60.0, 'fine'),
    'aorta': (170.0, 30.0, 3.0, 'smooth'),
    'vena_cava': (125.0, 20.0, 3.0, 'smooth'),
    'cortical_bone': (1000.0, 150.0, 60.0, 'fine'),
    'trabecular_bone': (230.0, 50.0, 60.0, 'fine'),
    'spinal_canal': (20.0, 8.0, 4.0, 'smooth'),
    'costal_cartilage': (140.0, 30.0, 10.0, 'smooth'),
    'mediastinal_fat': (-100.0, 10.0, 10.0, 'smooth'),
    'lung': (-850.0, 30.0, 25.0, 'fine'),
    'pulmonary_vessel': (40.0, 10.0, 5.0, 'smooth'),
    'bronchial_wall': (40.0, 10.0, 5.0, 'smooth'),
    'airway': (-990.0, 8.0, 5.0, 'smooth'),
    'heart': (40.0, 8.0, 5.0, 'smooth'),
    'great_vessel': (175.0, 25.0, 3.0, 'smooth'),   # Contrast-enhanced.
    'esophagus': (45.0, 8.0, 5.0, 'smooth'),
}
# The tissues of each anatomy, in the order their values are drawn.
ABDOMEN_TISSUES = (
    'air', 'couch_shell', 'couch_core', 'skin', 'subcutaneous_fat', 'muscle',
    'visceral_fat', 'liver', 'hepatic_vessel', 'spleen', 'kidney_cortex',
    'renal_sinus', 'pancreas', 'stomach_wall', 'stomach_fluid', 'bowel_wall',
    'bowel_fluid', 'gas', 'stool', 'aorta', 'vena_cava', 'cortical_bone',
    'trabecular_bone', 'spinal_canal', 'costal_cartilage')
THORAX_TISSUES = (
    'air', 'couch_shell', 'couch_core', 'skin', 'subcutaneous_fat', 'muscle',
    'mediastinal_fat', 'lung', 'pulmonary_vessel', 'bronchial_wall', 'airway',
    'heart', 'great_vessel', 'esophagus', 'gas', 'cortical_bone',
    'trabecular_bone', 'spinal_canal', 'costal_cartilage')
# Chest scans with contrast (great vessels at 'great_vessel'); the others are
# unenhanced, like most low-dose chest CT (screening), with blood at
# N(UNENHANCED_BLOOD_HU) (mean, std).
THORAX_CONTRAST_FRACTION = 0.3
UNENHANCED_BLOOD_HU = (42.0, 5.0)
# Tissues whose unclipped shape marks the body cavity (the 'cavity' clip).
_CAVITY_TISSUES = ('visceral_fat', 'mediastinal_fat')
LESION_CONTRAST_HU = (10.0, 30.0)   # |lesion - liver|, uniform in this range.
_MAX_LESIONS = 3
# Tissues the simulated readers treat as homogeneous (noise ROIs).
HOMOGENEOUS_TISSUES = ('liver', 'spleen', 'muscle')


@dataclasses.dataclass(frozen=True)
class Shape:
  """One painted blob, in mm, at z = 0 plus its change along z.

  Attributes:
    tissue: key of the patient's tissue table.
    centre: (x, y) at z = 0, mm.
    axes: (a, b) semi-axes at z = 0, mm.
    angle: rotation of the a axis from +x, radians.
    harmonics: ((k, cos_amplitude, sin_amplitude), ...): the boundary radius
      is multiplied by 1 + sum(c cos(k phi) + s sin(k phi)).
    drift: (dx/dz, dy/dz) of the centre, mm per mm.
    growth: relative change of the axes per mm of z.
    z_extent: (z_centre, half_length) mm, or None for "all slices": the axes
      are scaled by sqrt(1 - ((z - z_centre) / half_length)^2), so spheres and
      ellipsoids have true cross-sections.
    clip: paint only where the label already is this tissue, or inside the
      body cavity for 'cavity' (where an unclipped shape of a
      _CAVITY_TISSUES tissue was painted: the abdominal or thoracic
      cavity); None paints everywhere.
    min_y: paint only above this y (mm, relative to the centre), for
      air-fluid levels; None paints the whole blob.
  """
  tissue: str
  centre: tuple[float, float]
  axes: tuple[float, float]
  angle: float = 0.0
  harmonics: tuple[tuple[int, float, float], ...] = ()
  drift: tuple[float, float] = (0.0, 0.0)
  growth: float = 0.0
  z_extent: Optional[tuple[float, float]] = None
  clip: Optional[str] = None
  min_y: Optional[float] = None

  def shrunk(self, thickness: float, tissue: str, **changes) -> 'Shape':
    """The same blob with both semi-axes reduced by `thickness` mm."""
    return dataclasses.replace(
        self, tissue=tissue, axes=(self.axes[0] - thickness,
                                   self.axes[1] - thickness), **changes)


@dataclasses.dataclass(frozen=True)
class Patient:
  """The anatomy of one simulated patient.

  Attributes:
    patient_seed: seeds the per-slice textures.
    tissue_hu: tissue -> mean HU for this patient (lesions included).
    shapes: painted in order.
    lesion_contrast_hu: lesion tissue -> HU difference to the liver.
    body_width_mm: lateral width of the body outline's ellipse at z = 0
      (its harmonics add a few per cent); a scanner's field of view is
      fitted to it.
  """
  patient_seed: int
  tissue_hu: dict[str, float]
  shapes: tuple[Shape, ...]
  lesion_contrast_hu: dict[str, float]
  body_width_mm: float


@dataclasses.dataclass(frozen=True)
class Slice:
  """A rasterised slice.

  Attributes:
    hu: (N, N) float32, HU, each pixel the area average of its sub-pixels.
    masks: tissue-group name -> (N, N) bool of pixels made only of that
      group: 'body' (any tissue but air and couch), one per
      HOMOGENEOUS_TISSUES (empty where the anatomy lacks it: a thorax has
      no liver or spleen), and 'lesion' (any lesion).
    lesions: ((mask (N, N) bool, contrast_hu), ...) of the lesions cut by
      this slice with at least one pure pixel.
  """
  hu: np.ndarray
  masks: dict[str, np.ndarray]
  lesions: tuple[tuple[np.ndarray, float], ...]


def _blob(tissue, centre, axes, rng, *, roughness=0.04, max_harmonic=4,
          **kwargs) -> Shape:
  """A Shape whose outline has random low harmonics of relative size ~roughness."""
  harmonics = tuple(
      (k, float(rng.normal(0.0, roughness / (k - 1))),
       float(rng.normal(0.0, roughness / (k - 1))))
      for k in range(2, max_harmonic + 1))
  return Shape(tissue, (float(centre[0]), float(centre[1])),
               (float(axes[0]), float(axes[1])), harmonics=harmonics, **kwargs)


def _drift(rng: np.random.Generator, scale: float = 0.15) -> tuple[float, float]:
  """(dx/dz, dy/dz) of a shape's centre, N(0, scale^2) each, mm per mm."""
  return (float(rng.normal(0.0, scale)), float(rng.normal(0.0, scale)))


def _outline_point(shape: Shape, phi: float) -> tuple[float, float]:
  """The point of the outline of an unrotated shape at polar angle phi (mm)."""
  radius = 1.0 + sum(c * np.cos(k * phi) + s * np.sin(k * phi)
                     for k, c, s in shape.harmonics)
  return (shape.centre[0] + shape.axes[0] * radius * np.cos(phi),
          shape.centre[1] + shape.axes[1] * radius * np.sin(phi))


@dataclasses.dataclass(frozen=True)
class _BodyWall:
  """The body outline and its layers, mm: skin, subcutaneous fat, a muscle
  wall, and the cavity inside it (filled with `cavity_tissue`)."""
  body: Shape
  skin: float
  subcutaneous: float
  wall: float
  cavity_tissue: str

  def at_depth(self, into_wall: float, tissue: str = 'muscle') -> Shape:
    """The outline `into_wall` (0: outer, 1: inner surface) through the wall."""
    return self.body.shrunk(self.skin + self.subcutaneous + self.wall * into_wall,
                            tissue)

  def shapes(self) -> list[Shape]:
    """Skin, subcutaneous fat, muscle and cavity, in painting order."""
    return [self.body, self.body.shrunk(self.skin, 'subcutaneous_fat'),
            self.at_depth(0.0), self.at_depth(1.0, self.cavity_tissue)]


def _tissue_values(rng: np.random.Generator, names: tuple[str, ...]
                   ) -> dict[str, float]:
  """tissue -> this patient's mean HU, drawn around TISSUES in `names` order."""
  values = {}
  for name in names:
    mean, spread, _, _ = TISSUES[name]
    values[name] = float(mean + rng.normal(0.0, spread)) if spread else mean
  return values


def _couch(rng: np.random.Generator, body_half_b: float) -> list[Shape]:
  """A curved carbon-fibre shell with a foam core, a few mm under a body of
  AP semi-axis `body_half_b` mm centred at the origin."""
  couch_y = -body_half_b - rng.uniform(2.0, 8.0) - 260.0
  return [Shape(tissue, (0.0, couch_y), (400.0 - inset, 268.0 - inset))
          for tissue, inset in (('couch_shell', 0.0), ('couch_core', 2.0),
                                ('couch_shell', 12.0), ('air', 14.0))]


def _body_wall(rng: np.random.Generator, half_a: float, half_b: float,
               subcutaneous_mm: tuple[float, float], wall_mm: tuple[float, float],
               cavity_tissue: str) -> _BodyWall:
  """A body outline of semi-axes (half_a, half_b) mm with layer thicknesses
  drawn from the (low, high) ranges, mm (skin 1.5-2.5 mm)."""
  body = _blob('skin', (0.0, 0.0), (half_a, half_b), rng, roughness=0.03,
               growth=float(rng.normal(0.0, 0.001)))
  skin = rng.uniform(1.5, 2.5)
  subcutaneous = rng.uniform(*subcutaneous_mm)
  wall = rng.uniform(*wall_mm)
  return _BodyWall(body, skin, subcutaneous, wall, cavity_tissue)


def _vertebra(rng: np.random.Generator, vertebra_y: float, vertebra_r: float,
              canal_r: float, canal_y: float,
              transverse_angle: tuple[float, float] = (-0.3, 0.1),
              spinous_mm: tuple[float, float] = (12.0, 18.0)) -> list[Shape]:
  """A vertebra on the midline: body (cortical shell, trabecular core) of
  radius `vertebra_r` at y = `vertebra_y`, canal of radius `canal_r` at
  `canal_y`, lamina, a spinous process (its centre U(spinous_mm) behind the
  canal, its half-length U(spinous_mm)) and transverse processes (rotated by
  side * U(transverse_angle) radians; negative: posterolateral), mm."""
  uniform = rng.uniform
  cortex = uniform(1.5, 2.5)
  body = _blob('cortical_bone', (0.0, vertebra_y),
               (vertebra_r * uniform(1.0, 1.15), vertebra_r), rng, roughness=0.03)
  lamina = Shape('cortical_bone', (0.0, canal_y), (canal_r + 4.0, canal_r + 3.0))
  spinous = Shape('cortical_bone', (0.0, canal_y - canal_r - uniform(*spinous_mm)),
                  (uniform(3.0, 5.0), uniform(*spinous_mm)))
  shapes = []
  for side in (-1.0, 1.0):
    shapes.append(Shape('cortical_bone',
                        (side * (canal_r + uniform(12.0, 18.0)), canal_y + 3.0),
                        (uniform(14.0, 20.0), uniform(3.5, 5.0)),
                        angle=side * uniform(*transverse_angle)))
  return shapes + [body, body.shrunk(cortex, 'trabecular_bone'),
                   spinous, spinous.shrunk(1.5, 'trabecular_bone'),
                   lamina, lamina.shrunk(3.0, 'spinal_canal')]


def _ribs(rng: np.random.Generator, wall_line: Shape, *, count: tuple[int, int],
          angles: tuple[float, float], radial_mm: tuple[float, float],
          tangential_mm: tuple[float, float], cartilage_below: float
          ) -> list[Shape]:
  """Rib cross-sections centred on `wall_line` (an unrotated outline), each
  side: U{count} of them at sorted angles from the anterior midline drawn
  from U(angles) * pi, semi-axes U(radial_mm) across and U(tangential_mm)
  along the wall, mm; costal cartilage below cartilage_below * pi, bone
  (cortical shell, trabecular core) behind."""
  uniform = rng.uniform
  shapes = []
  for side in (-1.0, 1.0):
    number = int(rng.integers(*count))
    for angle in np.sort(uniform(*angles, size=number)) * np.pi:
      centre = _outline_point(wall_line, np.pi / 2 - side * angle)
      size = (uniform(*radial_mm), uniform(*tangential_mm))
      tissue = 'costal_cartilage' if angle < cartilage_below * np.pi else 'cortical_bone'
      rib = Shape(tissue, centre, size, angle=float(side * (np.pi / 2 - angle)))
      shapes.append(rib)
      if tissue == 'cortical_bone':
        shapes.append(rib.shrunk(1.5, 'trabecular_bone'))
  return shapes


def sample_patient(rng: np.random.Generator, patient_seed: int,
                   z_range_mm: float) -> Patient:
  """Draws one patient's abdomen at about L1-L2.

  Args:
    rng: the only source of randomness for the anatomy.
    patient_seed: stored in the Patient, seeds the slice textures.
    z_range_mm: length along z covered by this patient's slices (lesions are
      placed where the slices are).

  Returns:
    A Patient; `render_slice` rasterises it at any z.
  """
  uniform, normal = rng.uniform, rng.normal
  tissue_hu = _tissue_values(rng, ABDOMEN_TISSUES)
  half_a = uniform(140.0, 185.0)          # Body lateral semi-axis, mm.
  half_b = half_a * uniform(0.68, 0.82)   # Anterior-posterior semi-axis.
  shapes = _couch(rng, half_b)
  # Body wall: skin, subcutaneous fat, muscle; the abdominal cavity inside.
  body_wall = _body_wall(rng, half_a, half_b, subcutaneous_mm=(8.0, 35.0),
                         wall_mm=(7.0, 14.0), cavity_tissue='visceral_fat')
  wall = body_wall.wall
  shapes.extend(body_wall.shapes())
  cavity_a, cavity_b = body_wall.at_depth(1.0).axes
  # Rectus abdominis: two flat muscles either side of the midline, front wall.
  front = cavity_b + wall * 0.3
  for side in (-1.0, 1.0):
    shapes.append(_blob('muscle', (side * uniform(22.0, 35.0), front),
                        (uniform(28.0, 40.0), uniform(5.0, 8.0)), rng,
                        angle=side * uniform(-0.25, -0.05)))
  # Vertebra: body (cortical shell + trabecular), canal, posterior elements.
  vertebra_r = uniform(17.0, 23.0)
  vertebra_y = -cavity_b * uniform(0.45, 0.6)
  canal_r = uniform(7.0, 10.0)
  canal_y = vertebra_y - vertebra_r - canal_r + 2.0
  # Paraspinal and psoas muscles (painted under the bone).
  for side in (-1.0, 1.0):
    shapes.append(_blob('muscle', (side * uniform(26.0, 36.0),
                                   canal_y - uniform(12.0, 20.0)),
                        (uniform(20.0, 28.0), uniform(24.0, 32.0)), rng,
                        angle=side * uniform(0.1, 0.4), drift=_drift(rng, 0.05)))
    shapes.append(_blob('muscle', (side * (vertebra_r + uniform(10.0, 18.0)),
                                   vertebra_y + uniform(-4.0, 8.0)),
                        (uniform(10.0, 17.0), uniform(12.0, 20.0)), rng,
                        angle=side * uniform(0.0, 0.5), growth=uniform(0.002, 0.01),
                        clip='cavity'))
  # Bowel: small-bowel loops (wall + gas or fluid) and colon (stool + gas).
  for _ in range(int(rng.integers(6, 15))):
    radius = uniform(8.0, 17.0)
    centre = (uniform(-0.7, 0.7) * cavity_a,
              uniform(vertebra_y + vertebra_r, cavity_b - radius))
    loop = _blob('bowel_wall', centre, (radius, radius * uniform(0.6, 1.0)),
                 rng, roughness=0.08, angle=uniform(0.0, np.pi),
                 drift=_drift(rng, 0.4), clip='cavity')
    content = 'gas' if rng.random() < 0.4 else 'bowel_fluid'
    shapes.append(loop)
    shapes.append(loop.shrunk(uniform(1.5, 3.0), content))
  for side in (-1.0, 1.0):
    radius = uniform(16.0, 24.0)
    colon = _blob('bowel_wall', (side * cavity_a * uniform(0.55, 0.75),
                                 uniform(-0.1, 0.4) * cavity_b),
                  (radius, radius * uniform(0.7, 1.0)), rng, roughness=0.1,
                  drift=_drift(rng, 0.2), clip='cavity')
    shapes.append(colon)
    shapes.append(colon.shrunk(2.0, 'stool'))
    for _ in range(int(rng.integers(1, 5))):
      bubble = uniform(2.0, 6.0)
      offset = rng.normal(0.0, radius * 0.35, 2)
      shapes.append(Shape('gas', (colon.centre[0] + offset[0],
                                  colon.centre[1] + offset[1]),
                          (bubble, bubble * uniform(0.6, 1.0)),
                          drift=colon.drift, clip='stool'))
  # Stomach (patient's left, anterior) with an air-fluid level.
  stomach = _blob('stomach_wall', (cavity_a * uniform(0.2, 0.45),
                                   cavity_b * uniform(0.2, 0.5)),
                  (uniform(30.0, 45.0), uniform(20.0, 32.0)), rng,
                  angle=uniform(-0.6, 0.2), growth=-uniform(0.005, 0.02),
                  drift=_drift(rng), clip='cavity')
  shapes.append(stomach)
  shapes.append(stomach.shrunk(uniform(3.0, 5.0), 'stomach_fluid'))
  shapes.append(stomach.shrunk(uniform(3.0, 5.0), 'gas',
                               min_y=uniform(-0.3, 0.5) * stomach.axes[1]))
  # Liver (patient's right) with vessels; spleen (left posterior).
  liver = _blob('liver', (-cavity_a * uniform(0.45, 0.6), cavity_b * uniform(-0.1, 0.2)),
                (cavity_a * uniform(0.38, 0.52), cavity_b * uniform(0.55, 0.8)),
                rng, roughness=0.06, angle=uniform(-0.3, 0.3),
                growth=-uniform(0.002, 0.01), drift=_drift(rng), clip='cavity')
  shapes.append(liver)
  for _ in range(int(rng.integers(2, 6))):
    radius = uniform(2.0, 6.0)
    shapes.append(Shape('hepatic_vessel',
                        (liver.centre[0] + normal(0.0, 0.3) * liver.axes[0],
                         liver.centre[1] + normal(0.0, 0.3) * liver.axes[1]),
                        (radius, radius * uniform(0.6, 1.0)),
                        drift=_drift(rng, 0.3), clip='liver'))
  shapes.append(_blob('spleen', (cavity_a * uniform(0.55, 0.75),
                                 -cavity_b * uniform(0.2, 0.5)),
                      (uniform(28.0, 45.0), uniform(15.0, 25.0)), rng,
                      angle=uniform(-1.2, -0.5), growth=-uniform(0.0, 0.015),
                      drift=_drift(rng), clip='cavity'))
  # Pancreas: elongated, in front of the spine towards the spleen.
  shapes.append(_blob('pancreas', (uniform(5.0, 25.0),
                                   vertebra_y + vertebra_r + uniform(25.0, 40.0)),
                      (uniform(40.0, 60.0), uniform(8.0, 13.0)), rng,
                      roughness=0.1, angle=uniform(0.0, 0.4), drift=_drift(rng),
                      clip='cavity'))
  # Kidneys: cortex with a medial sinus, either side of the spine.
  for side in (-1.0, 1.0):
    kidney = _blob('kidney_cortex', (side * (vertebra_r + uniform(38.0, 55.0)),
                                     vertebra_y + uniform(-10.0, 10.0)),
                   (uniform(24.0, 32.0), uniform(17.0, 23.0)), rng,
                   angle=side * uniform(0.3, 0.9), drift=_drift(rng, 0.1),
                   z_extent=(uniform(-0.5, 0.5) * z_range_mm,
                             uniform(40.0, 60.0)), clip='cavity')
    shapes.append(kidney)
    sinus_offset = uniform(4.0, 9.0)
    shapes.append(dataclasses.replace(
        kidney.shrunk(kidney.axes[1] * uniform(0.6, 0.75), 'renal_sinus'),
        centre=(kidney.centre[0] - side * sinus_offset, kidney.centre[1]),
        clip='kidney_cortex'))
  # Great vessels in front of the vertebra.
  aorta_r = uniform(9.0, 13.0)
  shapes.append(Shape('aorta', (uniform(5.0, 18.0),
                                vertebra_y + vertebra_r + aorta_r + 1.0),
                      (aorta_r, aorta_r * uniform(0.9, 1.0))))
  shapes.append(Shape('vena_cava', (-uniform(20.0, 32.0),
                                    vertebra_y + vertebra_r + uniform(8.0, 14.0)),
                      (uniform(10.0, 16.0), uniform(7.0, 11.0)),
                      angle=uniform(-0.3, 0.3)))
  # Vertebra last among the deep structures: bone covers what it overlaps.
  shapes.extend(_vertebra(rng, vertebra_y, vertebra_r, canal_r, canal_y))
  # Ribs in the lateral wall (bone, or cartilage towards the front).
  shapes.extend(_ribs(rng, body_wall.at_depth(0.5), count=(2, 5),
                      angles=(0.15, 0.85), radial_mm=(5.0, 8.0),
                      tangential_mm=(3.5, 5.5), cartilage_below=0.3))
  # Liver lesions: spheres near the slices, hypo- or hyper-dense.
  lesion_contrast = {}
  for index in range(int(rng.integers(0, _MAX_LESIONS + 1))):
    name = f'lesion{index}'
    contrast = float(uniform(*LESION_CONTRAST_HU) * rng.choice([-1.0, -1.0, 1.0]))
    lesion_contrast[name] = contrast
    tissue_hu[name] = tissue_hu['liver'] + contrast
    radius = uniform(5.0, 15.0)
    shapes.append(Shape(
        name, (liver.centre[0] + normal(0.0, 0.35) * liver.axes[0],
               liver.centre[1] + normal(0.0, 0.35) * liver.axes[1]),
        (radius, radius), z_extent=(uniform(-0.5, 0.5) * z_range_mm, radius),
        drift=liver.drift, clip='liver'))
  return Patient(patient_seed=int(patient_seed), tissue_hu=tissue_hu,
                 shapes=tuple(shapes), lesion_contrast_hu=lesion_contrast,
                 body_width_mm=float(2.0 * half_a))


def _lung_branches(rng: np.random.Generator, lung: Shape, side: float,
                   number: int, reach: tuple[float, float]
                   ) -> list[tuple[tuple[float, float], float]]:
  """(centre mm, closeness to the hilum in [0, 1]) of `number` points that
  fan out laterally from the lung's hilum (its medial edge) to U(reach) of
  the way to the outline; 1 at the hilum."""
  hilum = (lung.centre[0] - side * 0.55 * lung.axes[0],
           lung.centre[1] + 0.1 * lung.axes[1])
  points = []
  for _ in range(number):
    distance = rng.uniform(*reach)
    direction = rng.uniform(-0.5, 0.5) * np.pi
    points.append(((hilum[0] + side * distance * 1.1 * lung.axes[0] * np.cos(direction),
                    hilum[1] + distance * 0.95 * lung.axes[1] * np.sin(direction)),
                   1.0 - distance))
  return points


def sample_thorax_patient(rng: np.random.Generator, patient_seed: int,
                          z_range_mm: float) -> Patient:
  """Draws one patient's chest at about T6-T8 (no lesions).

  Args:
    rng: the only source of randomness for the anatomy.
    patient_seed: stored in the Patient, seeds the slice textures.
    z_range_mm: length along z covered by this patient's slices (the
      ascending aorta and pulmonary trunk are centred above its middle and
      may end below, where they leave the heart).

  Returns:
    A Patient; `render_slice` rasterises it at any z.
  """
  uniform, normal = rng.uniform, rng.normal
  tissue_hu = _tissue_values(rng, THORAX_TISSUES)
  if rng.random() >= THORAX_CONTRAST_FRACTION:
    tissue_hu['great_vessel'] = float(normal(*UNENHANCED_BLOOD_HU))
  half_a = uniform(145.0, 190.0)          # Body lateral semi-axis, mm.
  half_b = half_a * uniform(0.6, 0.75)    # Anterior-posterior semi-axis.
  shapes = _couch(rng, half_b)
  body_wall = _body_wall(rng, half_a, half_b, subcutaneous_mm=(5.0, 30.0),
                         wall_mm=(9.0, 16.0), cavity_tissue='mediastinal_fat')
  shapes.extend(body_wall.shapes())
  cavity_a, cavity_b = body_wall.at_depth(1.0).axes
  outer_muscle = body_wall.at_depth(0.0)
  # Pectoralis major (anterior) and the scapular muscles (posterolateral)
  # thicken the wall into the fat; a scapula is a thin bone plate inside.
  for side in (-1.0, 1.0):
    for angles, length, plate in (((0.15, 0.3), (35.0, 55.0), False),
                                  ((0.68, 0.8), (40.0, 60.0), True)):
      angle = uniform(*angles) * np.pi  # From the anterior midline.
      phi, across = np.pi / 2 - side * angle, float(side * (np.pi / 2 - angle))
      thickness = min(uniform(5.0, 14.0), 0.8 * body_wall.subcutaneous)
      shapes.append(_blob('muscle', _outline_point(outer_muscle, phi),
                          (thickness, uniform(*length)), rng, angle=across,
                          clip='subcutaneous_fat'))
      if plate:
        shapes.append(Shape('cortical_bone',
                            _outline_point(body_wall.at_depth(0.15), phi),
                            (uniform(1.5, 2.5), uniform(30.0, 45.0)),
                            angle=across + float(normal(0.0, 0.1)), clip='muscle'))
  # Thoracic vertebra, placed from the back: the (short, steeply sloping)
  # spinous process ends a few mm inside the back muscles.
  vertebra_r = uniform(13.0, 17.0)
  canal_r = uniform(6.0, 8.0)
  spinous_mm = (7.0, 11.0)
  back = -(half_b - body_wall.skin - body_wall.subcutaneous)
  canal_y = back + 3.0 + 2.0 * spinous_mm[1] + canal_r
  vertebra_y = canal_y + canal_r + vertebra_r - 2.0
  vertebra_top = vertebra_y + vertebra_r
  # Lungs fill the cavity either side; the mediastinum between them.
  lungs = []
  for side in (-1.0, 1.0):
    lung = _blob('lung', (side * cavity_a * uniform(0.45, 0.55),
                          -cavity_b * uniform(0.0, 0.15)),
                 (cavity_a * uniform(0.55, 0.65), cavity_b * uniform(0.95, 1.1)),
                 rng, roughness=0.05, growth=float(normal(0.0, 0.002)),
                 clip='cavity')
    lungs.append((side, lung))
    shapes.append(lung)
  shapes.append(_blob('mediastinal_fat', (uniform(0.0, 12.0),
                                          cavity_b * uniform(-0.05, 0.1)),
                      (cavity_a * uniform(0.2, 0.3), cavity_b * 1.05), rng,
                      roughness=0.06, clip='cavity'))
  # Heart (left of the midline, long axis to the left-anterior, 40-50 % of
  # the chest's inner width) in its fat, from just in front of the spine.
  heart_a = cavity_a * uniform(0.4, 0.5)
  heart_b, tilt = heart_a / uniform(1.2, 1.45), uniform(0.3, 0.65)
  half_height = np.hypot(heart_a * np.sin(tilt), heart_b * np.cos(tilt))
  heart = _blob('heart', (cavity_a * uniform(0.1, 0.22),
                          vertebra_top + uniform(6.0, 12.0) + half_height),
                (heart_a, heart_b), rng, roughness=0.05, angle=tilt,
                growth=-uniform(0.0, 0.008), drift=_drift(rng, 0.1), clip='cavity')
  shapes.append(heart.shrunk(-uniform(2.0, 6.0), 'mediastinal_fat'))
  shapes.append(heart)
  # Ascending aorta (right) and pulmonary trunk (left, anterior) at the
  # heart's base: ellipsoids centred above the slices' middle, so they
  # narrow towards lower z and may end within the slices.
  for x_range, up, radius_range in (((-22.0, -8.0), (0.1, 0.4), (13.0, 18.0)),
                                    ((10.0, 25.0), (0.3, 0.6), (11.0, 15.0))):
    radius = uniform(*radius_range)
    shapes.append(Shape('great_vessel', (uniform(*x_range),
                                         heart.centre[1] + uniform(*up) * half_height),
                        (radius, radius * uniform(0.85, 1.0)), drift=_drift(rng, 0.1),
                        z_extent=(uniform(0.0, 0.5) * z_range_mm + uniform(5.0, 25.0),
                                  uniform(25.0, 50.0)), clip='cavity'))
  # Esophagus (collapsed, sometimes with air) and descending aorta (left)
  # in front of and beside the vertebral body.
  esophagus = _blob('esophagus', (uniform(-5.0, 8.0), vertebra_top + uniform(5.0, 10.0)),
                    (uniform(7.0, 10.0), uniform(5.0, 7.0)), rng,
                    drift=_drift(rng, 0.1), clip='cavity')
  shapes.append(esophagus)
  if rng.random() < 0.5:
    shapes.append(esophagus.shrunk(esophagus.axes[1] * uniform(0.5, 0.8), 'gas',
                                   clip='esophagus'))
  aorta_r = uniform(10.0, 14.0)
  aorta = Shape('great_vessel', (vertebra_r + aorta_r * uniform(0.4, 0.8),
                                 vertebra_y + vertebra_r * uniform(0.4, 0.9)),
                (aorta_r, aorta_r * uniform(0.9, 1.0)), drift=_drift(rng, 0.05),
                clip='cavity')
  shapes.append(aorta.shrunk(-uniform(1.5, 3.0), 'mediastinal_fat'))
  shapes.append(aorta)
  # Bronchi (air, thin wall) near the hila; pulmonary vessels, thicker near
  # the hila, running obliquely through the slices.
  for side, lung in lungs:
    for centre, hilar in _lung_branches(rng, lung, side, int(rng.integers(2, 6)),
                                        (0.05, 0.5)):
      radius = 2.0 + 4.0 * hilar * uniform(0.5, 1.0)
      bronchus = _blob('bronchial_wall', centre, (radius, radius * uniform(0.7, 1.0)),
                       rng, angle=uniform(0.0, np.pi), drift=_drift(rng, 0.3),
                       clip='lung')
      shapes.append(bronchus)
      shapes.append(bronchus.shrunk(uniform(0.8, 1.5), 'airway',
                                    clip='bronchial_wall'))
    for centre, hilar in _lung_branches(rng, lung, side, int(rng.integers(40, 80)),
                                        (0.0, 1.0)):
      radius = 1.0 + 3.0 * hilar * uniform(0.5, 1.0)
      shapes.append(Shape('pulmonary_vessel', centre,
                          (radius, radius * uniform(1.0, 2.5)),
                          angle=uniform(0.0, np.pi), drift=_drift(rng, 0.6),
                          clip='lung'))
  # Paraspinal muscles either side of the spinous process, from the back
  # muscle up to the canal (painted under the bone).
  for side in (-1.0, 1.0):
    depth = 0.5 * (canal_y - back) * uniform(0.9, 1.1)
    shapes.append(_blob('muscle', (side * uniform(25.0, 38.0), back + 1.0 + depth),
                        (uniform(18.0, 28.0), depth), rng,
                        angle=side * uniform(0.0, 0.3), drift=_drift(rng, 0.05)))
  shapes.extend(_vertebra(rng, vertebra_y, vertebra_r, canal_r, canal_y,
                          transverse_angle=(-0.6, -0.3), spinous_mm=spinous_mm))
  # Sternum in the front wall; ribs around the wall, near the lungs.
  sternum = _blob('cortical_bone', (float(normal(0.0, 2.0)),
                                    cavity_b + uniform(0.0, 0.4) * body_wall.wall),
                  (uniform(11.0, 17.0), uniform(4.0, 6.0)), rng, roughness=0.03)
  shapes.append(sternum)
  shapes.append(sternum.shrunk(uniform(1.0, 1.8), 'trabecular_bone'))
  shapes.extend(_ribs(rng, body_wall.at_depth(0.65), count=(5, 9),
                      angles=(0.1, 0.88), radial_mm=(3.5, 5.0),
                      tangential_mm=(6.0, 13.0), cartilage_below=0.2))
  return Patient(patient_seed=int(patient_seed), tissue_hu=tissue_hu,
                 shapes=tuple(shapes), lesion_contrast_hu={},
                 body_width_mm=float(2.0 * half_a))


def _shape_at(shape: Shape, z_mm: float) -> Optional[tuple[float, float, float, float]]:
  """(centre x, centre y, a, b) of the cross-section at z, or None if absent."""
  scale = 1.0 + shape.growth * z_mm
  if shape.z_extent is not None:
    z_centre, half_length = shape.z_extent
    along = (z_mm - z_centre) / half_length
    if abs(along) >= 1.0:
      return None
    scale *= np.sqrt(1.0 - along**2)
  if scale <= 0.05:
    return None
  return (shape.centre[0] + shape.drift[0] * z_mm,
          shape.centre[1] + shape.drift[1] * z_mm,
          shape.axes[0] * scale, shape.axes[1] * scale)


def _inside(shape: Shape, section: tuple[float, float, float, float],
            dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
  """Whether points at (dx, dy) mm from the section's centre lie in the blob.

  Args:
    shape: the blob (angle, harmonics, min_y).
    section: `_shape_at` of the blob.
    dx, dy: broadcastable arrays of offsets, mm.

  Returns:
    bool array of the broadcast shape.
  """
  _, _, a, b = section
  cos, sin = np.cos(shape.angle), np.sin(shape.angle)
  u = (dx * cos + dy * sin) / a
  v = (-dx * sin + dy * cos) / b
  radius2 = u * u + v * v
  bound = np.ones_like(radius2)
  if shape.harmonics:
    # cos(k phi), sin(k phi) of the polar angle of (u, v) by the angle-sum
    # recursion, without transcendental functions.
    radius = np.sqrt(np.maximum(radius2, 1e-12))
    cos_1, sin_1 = u / radius, v / radius
    cos_k, sin_k = cos_1, sin_1
    for k in range(2, max(k for k, _, _ in shape.harmonics) + 1):
      cos_k, sin_k = cos_k * cos_1 - sin_k * sin_1, sin_k * cos_1 + cos_k * sin_1
      for order, c, s in shape.harmonics:
        if order == k:
          bound += c * cos_k + s * sin_k
  inside = radius2 <= bound * bound
  if shape.min_y is not None:
    inside &= dy >= shape.min_y
  return inside


class _PixelCentres:
  """The centres of an N x N pixel grid, addressed by bounding boxes.

  Attributes:
    xs: (N,) x of the columns, mm (increasing).
    ys: (N,) y of the rows, mm (decreasing: row 0 is anterior).
    pixel_mm: pixel side.
  """

  def __init__(self, image_size: int, pixel_mm: float):
    # float32 halves the painting's memory traffic; 1e-7 relative is far
    # below a sub-pixel.
    coords = ((np.arange(image_size) - (image_size - 1) / 2.0) *
              pixel_mm).astype(np.float32)
    self.xs, self.ys, self.pixel_mm = coords, -coords, pixel_mm
    self.shape = (image_size, image_size)

  def box(self, x_low, x_high, y_low, y_high, margin=0.0):
    """(rows, cols) slices of the pixels whose centres lie in the box grown
    by `margin` mm, or None when it misses the grid."""
    cols = slice(max(0, int(np.searchsorted(self.xs, x_low - margin))),
                 int(np.searchsorted(self.xs, x_high + margin)) + 1)
    rows = slice(max(0, int(np.searchsorted(-self.ys, -(y_high + margin)))),
                 int(np.searchsorted(-self.ys, -(y_low - margin))) + 1)
    if cols.start >= min(cols.stop, self.shape[1]) or rows.start >= min(
        rows.stop, self.shape[0]):
      return None
    return rows, cols

  def coordinates(self, index):
    rows, cols = index
    return self.xs[cols][None, :], self.ys[rows][:, None]


class _EdgeSubpixels:
  """s x s sub-pixel centres of the pixels that a boundary may cross.

  Point p * s^2 + q is sub-pixel q (row-major) of edge pixel p, the edge
  pixels numbered in row-major order of the grid.
  """

  def __init__(self, grid: _PixelCentres, edges: np.ndarray, supersample: int):
    self.grid = grid
    self.edge_id = np.full(grid.shape, -1, np.int64)
    rows, cols = np.nonzero(edges)
    self.edge_id[rows, cols] = np.arange(len(rows))
    offsets = (((np.arange(supersample) + 0.5) / supersample - 0.5) *
               grid.pixel_mm).astype(np.float32)
    off_y, off_x = np.meshgrid(-offsets, offsets, indexing='ij')
    self.x = (grid.xs[cols][:, None] + off_x.ravel()[None]).ravel()
    self.y = (grid.ys[rows][:, None] + off_y.ravel()[None]).ravel()
    self.per_pixel = supersample**2
    self.shape = self.x.shape

  def box(self, x_low, x_high, y_low, y_high):
    """Indices of the sub-pixels of edge pixels near the box, or None."""
    pixels = self.grid.box(x_low, x_high, y_low, y_high,
                           margin=self.grid.pixel_mm / 2.0)
    if pixels is None:
      return None
    ids = self.edge_id[pixels]
    ids = ids[ids >= 0]
    if not ids.size:
      return None
    return (ids[:, None] * self.per_pixel + np.arange(self.per_pixel)).ravel()

  def coordinates(self, index):
    return self.x[index], self.y[index]


def _paint(patient: Patient, z_mm: float, points, tissue_id: dict[str, int]
           ) -> np.ndarray:
  """Tissue labels (`tissue_id` values, int16) at `points` (a _PixelCentres
  or _EdgeSubpixels): the shapes painted in order, clipped where asked."""
  label = np.full(points.shape, tissue_id['air'], np.int16)
  cavity = np.zeros(points.shape, bool)
  for shape in patient.shapes:
    section = _shape_at(shape, z_mm)
    if section is None:
      continue
    cx, cy, a, b = section
    cos, sin = np.cos(shape.angle), np.sin(shape.angle)
    swell = 1.0 + sum(abs(c) + abs(s) for _, c, s in shape.harmonics)
    reach_x = swell * np.hypot(a * cos, b * sin)  # Bounding box half-sides.
    reach_y = swell * np.hypot(a * sin, b * cos)
    index = points.box(cx - reach_x, cx + reach_x, cy - reach_y, cy + reach_y)
    if index is None:
      continue
    x, y = points.coordinates(index)
    inside = _inside(shape, section, x - cx, y - cy)
    if shape.clip == 'cavity':
      inside &= cavity[index]
    elif shape.clip is not None:
      inside &= label[index] == tissue_id[shape.clip]
    label[index] = np.where(inside, np.int16(tissue_id[shape.tissue]),
                            label[index])
    if shape.tissue in _CAVITY_TISSUES and shape.clip is None:
      cavity[index] |= inside
  return label


def _edge_pixels(label: np.ndarray) -> np.ndarray:
  """(N, N) bool: pixels whose 3 x 3 neighbourhood holds another label.

  A boundary that crosses a pixel separates its centre from a neighbour's
  (shapes are smooth and at least a pixel thick), so the other pixels lie
  inside one tissue.
  """
  padded = np.pad(label, 1, mode='edge')
  size_y, size_x = label.shape
  edges = np.zeros(label.shape, bool)
  for dy in range(3):
    for dx in range(3):
      edges |= padded[dy:dy + size_y, dx:dx + size_x] != label
  return edges


def _texture(rng: np.random.Generator, size: int,
             sigma_pixels: float) -> np.ndarray:
  """(size, size) unit-variance Gaussian-filtered white noise, float32
  (periodic filtering in the Fourier domain)."""
  frequency_y = np.fft.fftfreq(size)[:, None]
  frequency_x = np.fft.rfftfreq(size)[None, :]
  transfer = np.exp(-2.0 * (np.pi * sigma_pixels)**2 *
                    (frequency_y**2 + frequency_x**2))
  white = rng.standard_normal((size, size), dtype=np.float32)
  field = fft.irfft2(fft.rfft2(white) * transfer.astype(np.float32), (size, size))
  return (field / field.std()).astype(np.float32)


def render_slice(patient: Patient, z_mm: float, *, image_size: int,
                 pixel_size_mm: float, supersample: int = 4) -> Slice:
  """Rasterises the patient's cross-section at z.

  Labels are painted at the pixel centres; pixels that a boundary may cross
  (`_edge_pixels`) are painted again at `supersample` x `supersample`
  sub-pixels and take the mean of their sub-pixels' values (partial volume);
  the others are pure. Textures are smooth (>= 1.5 mm grain), so each
  pixel's sub-pixels share its texture values.

  Args:
    patient: from `sample_patient` or `sample_thorax_patient`.
    z_mm: slice position along the patient, mm.
    image_size: N, pixels per side.
    pixel_size_mm: pixel side, mm.
    supersample: sub-pixels per edge pixel side (1: no partial volume).

  Returns:
    A Slice with hu (N, N) float32.
  """
  # Textures are seeded by (patient, z): a slice is a pure function of its
  # arguments.
  texture_rng = np.random.default_rng(
      [patient.patient_seed, int(round(z_mm * 1000.0)) & 0xFFFFFFFF])
  names = list(patient.tissue_hu)
  tissue_id = {name: index for index, name in enumerate(names)}
  grid = _PixelCentres(image_size, pixel_size_mm)
  label = _paint(patient, z_mm, grid, tissue_id)
  edges = _edge_pixels(label) if supersample > 1 else np.zeros(label.shape, bool)
  subpixels = _EdgeSubpixels(grid, edges, supersample)
  # (E, s^2) labels of the edge pixels' sub-pixels.
  sub_label = _paint(patient, z_mm, subpixels, tissue_id).reshape(
      -1, subpixels.per_pixel)

  mean_hu = np.array([patient.tissue_hu[name] for name in names], np.float32)
  texture_std = np.array(
      [TISSUES[name if name in TISSUES else 'liver'][2] for name in names],
      np.float32)
  fine = np.array([TISSUES[name if name in TISSUES else 'liver'][3] == 'fine'
                   for name in names])
  smooth_field = _texture(texture_rng, image_size, 4.0 / pixel_size_mm)
  fine_field = _texture(texture_rng, image_size, 1.5 / pixel_size_mm)

  def values(labels, smooth, fine_):
    return mean_hu[labels] + texture_std[labels] * np.where(
        fine[labels], fine_, smooth)

  hu = values(label, smooth_field, fine_field)
  hu[edges] = values(sub_label, smooth_field[edges][:, None],
                     fine_field[edges][:, None]).mean(axis=1)

  def pure(member: np.ndarray) -> np.ndarray:
    """Pixels whose every sub-pixel has a label with member[label]."""
    mask = member[label]
    mask[edges] = member[sub_label].all(axis=1)
    return mask

  def group(*tissues):  # Tissues the patient lacks match no pixel.
    return np.isin(np.arange(len(names)),
                   [tissue_id[name] for name in tissues if name in tissue_id])

  masks = {'body': pure(~group('air', 'couch_shell', 'couch_core'))}
  for name in HOMOGENEOUS_TISSUES:
    masks[name] = pure(group(name))
  lesions = []
  any_lesion = np.zeros(label.shape, bool)
  for name, contrast in patient.lesion_contrast_hu.items():
    mask = pure(group(name))
    if mask.any():
      lesions.append((mask, contrast))
      any_lesion |= mask
  masks['lesion'] = any_lesion
  return Slice(hu=hu.astype(np.float32), masks=masks, lesions=tuple(lesions))
