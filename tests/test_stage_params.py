"""Every line of every stage's `parameters` cell is one papermill can parse: a line it cannot parse prints
"Unable to parse line ..." in the middle of a run (e.g. a `=` or `>=` inside the comment)."""
import json, logging
from pathlib import Path
import pytest
from papermill.translators import PythonTranslator

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted((ROOT/"nbs"/"pipeline").glob("*.ipynb"))

@pytest.mark.parametrize("path", STAGES, ids=[p.stem for p in STAGES])
def test_parameters_cell_parses(path, caplog):
    cells = [c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged parameters"
    src = "".join(cells[0]["source"])
    with caplog.at_level(logging.WARNING, logger="papermill"):
        params = PythonTranslator.inspect({"source": src})
    assert not [r.message for r in caplog.records if "Unable to parse" in r.message]
    assert params, f"{path.name}: papermill found no parameter"
