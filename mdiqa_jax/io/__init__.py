"""Reading CT slices from DICOM, TIFF, PNG and NumPy files for scoring.

  find_inputs(paths) -> InputFiles      files under the paths, series ordered
  read_file(path, kind) -> [Slice]      slices in HU or windowed to [0, 1]
  to_unit(slice) -> (H, W) in [0, 1]    the model's intensity range
  capture_messages()                    the readers' warnings and library logs

`slices` documents how each format's values are read as HU or as windowed
intensities; every bad file raises `InputFileError` naming it.
"""
from mdiqa_jax.io.inputs import (DICOM, NPY, PNG, TIFF, InputFiles, capture_messages,
                                 file_format, find_inputs, read_file)
from mdiqa_jax.io.slices import (HU, INTENSITY_MODES, MAX_PIXELS_PER_FILE, MIN_SIDE, UNIT,
                                 AssumedIntensityWarning, InputFileError, Slice, to_unit)
