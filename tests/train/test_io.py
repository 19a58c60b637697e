"""libs.train.io pytree files: a round trip, and a clear error for a missing file."""

import numpy as np
import pytest

from libs.train import io as io_lib


def test_pytree_round_trip_keeps_structure_dtypes_and_values(tmp_path):
  tree = {"lm": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.int32)}, "s": np.float64(2.5)}
  path = io_lib.save_pytree(str(tmp_path / "stage" / "params.msgpack"), tree)
  back = io_lib.load_pytree(path)
  np.testing.assert_array_equal(back["lm"]["w"], tree["lm"]["w"])
  assert back["lm"]["w"].dtype == np.float32 and back["lm"]["b"].dtype == np.int32
  assert float(back["s"]) == 2.5
  assert not [p for p in (tmp_path / "stage").iterdir() if ".tmp" in p.name]  # no temporary file left


def test_missing_pytree_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.msgpack does not exist"):
    io_lib.load_pytree(str(tmp_path / "nothing.msgpack"))
