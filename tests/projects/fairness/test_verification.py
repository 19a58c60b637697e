"""End-to-end, in-process: `arw:tiny` writes every output the issue names (data parallel on the 8 fake devices).

The numbers of tiny runs mean nothing; the checks are on what is written and on the
invariants between its parts.
"""

import os

import pytest

from projects.fairness import verification
from projects.fairness.configs import arw as arw_configs

pytestmark = pytest.mark.slow  # end-to-end: `make test-fast` skips it


def test_arw_tiny_reports_eer_gaps_and_det(tiny_corpus_dir, tmp_path):
  config = arw_configs.get_config("tiny")
  config.data.data_dir = tiny_corpus_dir
  config.progress = False
  results = verification.run(config, str(tmp_path / "arw"))
  assert [r["method"] for r in results["runs"]] == ["baseline", "arw"]
  for r in results["runs"]:
    assert 0.0 <= r["eer"] <= 1.0 and 0.0 <= r["gender_eer_gap"] <= 1.0
    assert r["accent_eer_std"] is None  # The tiny test split has one speaker per accent: no accent trial.
  d = results["details"]["baseline"]
  assert len(d["unscored_accents"]) == 7 and d["eer_by_accent"] == {}
  assert set(d["eer_by_gender"]) == {"female", "male"}
  assert d["gender_eer_gap"] == pytest.approx(abs(d["eer_by_gender"]["female"] - d["eer_by_gender"]["male"]))
  assert os.path.getsize(os.path.join(str(tmp_path / "arw"), "figures", "det_by_gender.png")) > 5_000
