"""The rows mdiqa-predict writes, as CSV or JSON (columns: predict.py's docstring)."""
import csv
import io as text_io
import json
import math
from typing import Any, Dict, Sequence, Tuple

from mdiqa_jax import io as ct_io

METADATA_COLUMNS = ('series_uid', 'instance_number', 'z_mm')


def spacing_text(spacing: Tuple[float, float]) -> str:
  """'0.7' for square pixels, '0.7x0.8' (rows x columns, mm) otherwise."""
  rows_mm, cols_mm = spacing
  return f'{rows_mm:.6g}' if math.isclose(rows_mm, cols_mm, rel_tol=1e-3) else (
      f'{rows_mm:.6g}x{cols_mm:.6g}')


def result_row(key: Any, prediction: Dict[str, Any]) -> Dict[str, Any]:
  """One output row: file, slice, score, uncertainty, scale_score_<k>, ...

  key: `paths.SliceKey` (the slice and the note of its reading).
  """
  ct_slice = key.slice
  row = {'file': ct_slice.file, 'slice': ct_slice.index, 'score': prediction['score'],
         'uncertainty': prediction['uncertainty']}
  row.update({f'scale_score_{k}': float(value)
              for k, value in enumerate(prediction['scale_scores'])})
  row.update({'height': int(ct_slice.pixels.shape[0]), 'width': int(ct_slice.pixels.shape[1]),
              'pixel_mm': spacing_text(prediction['pixel_mm']),
              'num_tiles': int(prediction['num_tiles']), 'intensity': ct_slice.intensity})
  row.update({name: ct_slice.metadata.get(name) for name in METADATA_COLUMNS})
  row.update({'note': '; '.join(([key.note] if key.note else []) + prediction['notes']),
              'error': ''})
  return row


def failure_row(error: ct_io.InputFileError) -> Dict[str, Any]:
  return {'file': error.path, 'error': error.reason}


def format_csv(rows: Sequence[Dict[str, Any]]) -> str:
  """CSV text; columns in the order of the first row (scored rows come first)."""
  columns = list(rows[0]) if rows else ['file', 'slice', 'score', 'uncertainty', 'error']
  for row in rows:
    columns.extend(name for name in row if name not in columns)
  buffer = text_io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, restval='', lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({name: _csv_value(value) for name, value in row.items()})
  return buffer.getvalue()


def _csv_value(value: Any) -> Any:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.6f}'
  return value


def format_json(rows: Sequence[Dict[str, Any]], failures: Sequence[Dict[str, Any]],
                settings: Dict[str, Any]) -> str:
  """JSON text: {'settings': ..., 'slices': [rows], 'failures': [{file, error}]}."""
  return json.dumps({'settings': settings, 'slices': list(rows), 'failures': list(failures)},
                    indent=2) + '\n'
