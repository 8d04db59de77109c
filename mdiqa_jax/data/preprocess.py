"""The one preprocessing of a CT slice, shared by training, evaluation and predict.

A slice is a (H, W) or (H, W, 1) float32 image already windowed to [0, 1]
(soft-tissue window; see `intensity.window_to_unit`). The model sees
(image_size, image_size, 1) float32 in [0, 1]. The path is:

  1. choose a square window of side `round(crop_fraction * min(H, W))` pixels
     (train: random position, or the centre when `random_crop` is off;
     test: the centre, or the four corners and the centre);
  2. `prepare_image`: resize that window to image_size x image_size with an
     antialiased bilinear (triangle) filter -- PIL's BILINEAR on float32 data,
     the same kernel as `jax.image.resize(..., 'linear', antialias=True)`;
  3. train only: random horizontal / vertical flips.

Every window has the same side at train and test time, so a slice is always
resampled by the same factor: the noise grain and streak width the model sees
at test time are those it was trained on. Nothing touches intensities: no
brightness, contrast or noise jitter, which would change the very quality the
labels measure.
"""
import numpy as np
from PIL import Image

def as_slice(image: np.ndarray) -> np.ndarray:
  """Returns a (H, W) float32 view of a (H, W) or (H, W, 1) slice in [0, 1]."""
  image = np.asarray(image, dtype=np.float32)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim != 2 or min(image.shape) < 1:
    raise ValueError(
        f'Expected a CT slice of shape (H, W) or (H, W, 1), got {image.shape}.')
  low, high = float(image.min()), float(image.max())
  if not (0.0 <= low and high <= 1.0):
    raise ValueError(
        'Expected a slice windowed to [0, 1] (finite values), got values in '
        f'[{low}, {high}]; window HU first (intensity.window_to_unit).')
  return image


def prepare_image(image: np.ndarray, image_size: int) -> np.ndarray:
  """Resizes a whole slice (or a window of one) to the model input.

  Args:
    image: (H, W) or (H, W, 1) float32 in [0, 1].
    image_size: side of the output, pixels.

  Returns:
    (image_size, image_size, 1) float32 in [0, 1]. A slice that already has
    that size is returned unchanged (bit for bit); otherwise it is resampled
    with an antialiased bilinear filter (PIL BILINEAR, whose support widens
    with the downscaling factor, so high-frequency noise is averaged rather
    than aliased). A non-square slice is stretched to a square.
  """
  image = as_slice(image)
  if image.shape != (image_size, image_size):
    image = np.asarray(
        Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR),
        dtype=np.float32)
    # Bilinear weights are non-negative, so overshoot is only rounding.
    image = np.clip(image, 0.0, 1.0)
  return image[..., None]


def crop_side(height: int, width: int, crop_fraction: float) -> int:
  """Side in pixels of the square window cut from a (height, width) slice."""
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f'crop_fraction must be in (0, 1], got {crop_fraction}.')
  return max(1, int(round(crop_fraction * min(height, width))))


def _window(image: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
  return image[top:top + side, left:left + side]


def train_crop(image: np.ndarray, *, image_size: int, crop_fraction: float,
               random_crop: bool, random_flip: bool,
               rng: np.random.Generator) -> np.ndarray:
  """Quality-preserving training augmentation of one slice.

  Args:
    image: (H, W) or (H, W, 1) float32 in [0, 1].
    image_size: model input side, pixels.
    crop_fraction: window side as a fraction of min(H, W).
    random_crop: window at a uniformly random position (else the centre).
    random_flip: independent horizontal and vertical flips, each with p=0.5.
    rng: the only source of randomness.

  Returns:
    (image_size, image_size, 1) float32: a window of the slice, resized by
    `prepare_image`, possibly flipped. Pixel values are only moved (and
    resampled when the window side differs from image_size), never rescaled.
  """
  image = as_slice(image)
  height, width = image.shape
  side = crop_side(height, width, crop_fraction)
  if random_crop:
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
  else:
    (top, left), = eval_windows(height, width, side, num_crops=1)
  out = prepare_image(_window(image, top, left, side), image_size)
  if random_flip:
    flip_rows, flip_cols = rng.random(2) < 0.5
    if flip_rows:
      out = out[::-1]
    if flip_cols:
      out = out[:, ::-1]
  return np.ascontiguousarray(out)


def check_num_crops(num_crops: int) -> None:
  """Raises ValueError unless num_crops is a supported test-time view count."""
  if num_crops not in (1, 5):
    raise ValueError(f'test_crops must be 1 (centre) or 5 (corners + centre), '
                     f'got {num_crops}.')


def eval_windows(height: int, width: int, side: int,
                 num_crops: int) -> list[tuple[int, int]]:
  """(top, left) of the test-time windows of side `side`, in `eval_crops` order.

  num_crops: 1 = the centre window; 5 = the four corner windows (top-left,
  top-right, bottom-left, bottom-right) then the centre.
  """
  check_num_crops(num_crops)
  centre = ((height - side) // 2, (width - side) // 2)
  if num_crops == 1:
    return [centre]
  bottom, right = height - side, width - side
  return [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]


def eval_crops(image: np.ndarray, *, image_size: int, crop_fraction: float,
               num_crops: int) -> np.ndarray:
  """Deterministic test-time views of one slice (evaluation and predict).

  Args:
    image: (H, W) or (H, W, 1) float32 in [0, 1].
    image_size: model input side, pixels.
    crop_fraction: window side as a fraction of min(H, W) (as in training).
    num_crops: 1 = the centre window; 5 = four corners then the centre
      (`eval_windows`).

  Returns:
    (num_crops, image_size, image_size, 1) float32. Callers average the
    predictions over axis 0.
  """
  image = as_slice(image)
  height, width = image.shape
  side = crop_side(height, width, crop_fraction)
  return np.stack([
      prepare_image(_window(image, top, left, side), image_size)
      for top, left in eval_windows(height, width, side, num_crops)
  ])
