"""Reading checkpoint files into flat {name: numpy array} dicts, and writing Orbax.

Formats read:
  .safetensors          timm state dicts (any float dtype, bfloat16 included);
  .pth / .pt / .bin     torch.save'd state dicts, read with torch.load
                        (weights_only) when PyTorch is installed;
  .npz                  big_vision / AugReg checkpoints ('/'-joined names);
  directory             an Orbax checkpoint written by `mdiqa-convert`.
Every read error (truncated file, wrong format) is raised as a ValueError that
names the file.
"""
import json
import pathlib
import zipfile

from flax import traverse_util
import numpy as np
import orbax.checkpoint as ocp
import safetensors

from mdiqa_jax import files

TORCH_SUFFIXES = ('.pth', '.pt', '.bin')
# The file `mdiqa-convert` writes next to the Orbax params: family, preset, report.
CONVERSION_INFO = 'conversion.json'
PARAMS_DIR = 'params'


def read_arrays(path) -> dict[str, np.ndarray]:
  """Every array of a checkpoint, keyed by its name in the file; float32 for floats."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'Checkpoint {path} does not exist.')
  if path.is_dir():
    return read_orbax(path)
  suffix = path.suffix.lower()
  if suffix == '.safetensors':
    return _read_safetensors(path)
  if suffix in TORCH_SUFFIXES:
    return _read_torch(path)
  if suffix == '.npz':
    return _read_npz(path)
  raise ValueError(f'Checkpoint {path}: unknown format {suffix!r}; expected .safetensors, '
                   f'{", ".join(TORCH_SUFFIXES)}, .npz or an Orbax directory.')


def _as_float32(array):
  """Floating arrays (float16 / bfloat16 / float64 included) as float32."""
  array = np.asarray(array)
  is_float = np.issubdtype(array.dtype, np.floating) or array.dtype.name == 'bfloat16'
  return array.astype(np.float32) if is_float else array


def _read_safetensors(path):
  try:
    with safetensors.safe_open(str(path), framework='numpy') as handle:
      return {name: _as_float32(handle.get_tensor(name)) for name in handle.keys()}
  except (safetensors.SafetensorError, OSError) as error:
    raise ValueError(f'Checkpoint {path} could not be read as safetensors (truncated or '
                     f'not a safetensors file): {error}') from error


def _read_npz(path):
  try:
    with np.load(path, allow_pickle=False) as archive:
      return {name: _as_float32(archive[name]) for name in archive.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
    raise ValueError(f'Checkpoint {path} could not be read as .npz (truncated or not an '
                     f'npz archive): {error}') from error


def _read_torch(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        f'Checkpoint {path}: reading {path.suffix} files needs PyTorch, which is not '
        'installed. Install torch, or save the state dict as .safetensors once '
        '(safetensors.torch.save_file(torch.load(path), "model.safetensors")) and '
        'pass that file instead.') from error
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # torch raises RuntimeError, EOFError, pickle errors.
    raise ValueError(f'Checkpoint {path} could not be read by torch.load (truncated or '
                     f'not a PyTorch checkpoint): {error}') from error
  # Training checkpoints wrap the state dict; DataParallel prefixes 'module.'.
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise ValueError(f'Checkpoint {path} holds a {type(state).__name__}, not a state dict.')
  arrays = {}
  for name, tensor in state.items():
    if isinstance(tensor, torch.Tensor):
      name = name[len('module.'):] if name.startswith('module.') else name
      tensor = tensor.detach().cpu()
      arrays[name] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
  return arrays


def read_orbax(path) -> dict[str, np.ndarray]:
  """Params written by `write_orbax`, '/'-joined; `path` is the output dir or params/."""
  path = pathlib.Path(path).resolve()
  if (path / PARAMS_DIR).is_dir():
    path = path / PARAMS_DIR
  try:
    tree = ocp.StandardCheckpointer().restore(path)
  except Exception as error:  # Orbax raises several types for a bad directory.
    raise ValueError(f'Checkpoint directory {path} could not be read as an Orbax '
                     f'checkpoint: {error}') from error
  return {name: _as_float32(value)
          for name, value in traverse_util.flatten_dict(tree, sep='/').items()}


def read_conversion_info(path) -> dict | None:
  """The conversion.json beside an Orbax checkpoint written by `mdiqa-convert`, if any."""
  path = pathlib.Path(path).resolve()
  for directory in (path, path.parent):
    info = directory / CONVERSION_INFO
    if info.is_file():
      return json.loads(info.read_text())
  return None


def write_orbax(output_dir, params, info: dict) -> pathlib.Path:
  """Writes params to output_dir/params (Orbax, atomic) and info to conversion.json.

  Orbax writes into a temporary directory and renames it when complete, so an
  interrupted run leaves no partial 'params'. Returns the params directory.
  """
  output_dir = pathlib.Path(output_dir).resolve()
  params_dir = output_dir / PARAMS_DIR
  if params_dir.exists():
    raise FileExistsError(f'{params_dir} already exists; choose a new --output directory.')
  output_dir.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_dir, params)
  checkpointer.wait_until_finished()
  files.write_text_atomically(str(output_dir / CONVERSION_INFO),
                              json.dumps(info, indent=1) + '\n')
  return params_dir
