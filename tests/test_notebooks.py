"""The notebooks in notebooks/, executed top to bottom with nbclient on small settings
(``LIT_LLM_NOTEBOOK_SMALL=1``), as a reader would run them: a cell that raises fails the test. Outputs are not
kept: the notebooks stay stripped in git (``test_notebooks_are_stripped``)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_four_notebooks_exist_and_are_stripped():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_sentiment.ipynb", "03_scaling.ipynb",
                                           "04_serve_and_feedback.ipynb"]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code"), path


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("LIT_LLM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    images = sum(1 for c in book.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    assert images >= {"01": 3, "02": 1, "03": 1, "04": 0}[path.name[:2]], f"{path.name} drew {images} images"
