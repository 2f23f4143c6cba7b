"""The example notebook (examples/logit-lens-and-ablation.ipynb: a logit lens
and an ablation on SmolLM2) runs headless with nbclient, and draws its
figures."""

from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_notebook_runs_and_draws_its_figures(smollm2):
    path = ROOT / "examples" / "logit-lens-and-ablation.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 2
    text = "".join(o.get("text", "") for o in outputs)
    assert '" Paris" is the top prediction from block' in text
    assert "the WASM plugin and the Python hook agree: True" in text
    assert "'The capital of France is Paris" in text.replace("is  Paris", "is Paris")
