"""The notebooks in notebooks/ run top to bottom, with smaller sizes injected.

Each notebook has one code cell tagged ``parameters`` that holds its sizes (images, image size,
epochs, steps). The slow tests replace the values named in ``SMALL_PARAMETERS`` in that cell and
execute the notebooks with nbclient, in parallel kernels running this interpreter (so the
package under test is the one imported). The fast tests check that the committed notebooks are
clean: no outputs, no execution counts, one parameter cell.

Plots: the kernel uses matplotlib's inline backend, which needs no display (it renders each
figure to PNG with Agg and closes it), so drawing errors fail the test. MPLBACKEND=Agg would
also run headless but never render: `plt.show()` would skip drawing and only warn.
"""

import ast
import asyncio
import json
import os
import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402 (after the skips)
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"

# Values that make each notebook run in well under a minute on a CPU. Every name must exist
# in the notebook's parameter cell.
SMALL_PARAMETERS = {
    "detection_basics.ipynb": {"IMAGE_SIZE": 128},
    "quickstart.ipynb": {
        "NUM_TRAIN_IMAGES": 16,
        "NUM_VAL_IMAGES": 4,
        "IMAGE_SIZE": 128,
        "BATCH_SIZE": 4,
        "EPOCHS": 2,
        "STEPS_PER_EPOCH": 2,
    },
    "custom_dataset.ipynb": {
        "NUM_IMAGES": 8,
        "IMAGE_SIZE": 128,
        "BATCH_SIZE": 4,
        "EPOCHS": 1,
        "STEPS_PER_EPOCH": 2,
    },
}
NOTEBOOKS = sorted(SMALL_PARAMETERS)
CELL_TIMEOUT_S = 600
KERNEL_NAME = "retinanet-notebook-test"


def _read(name):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def _parameter_cell(notebook, name):
    cells = [cell for cell in notebook.cells
             if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])]
    if len(cells) != 1:
        raise AssertionError(f"{name}: expected one code cell tagged 'parameters', "
                             f"found {len(cells)}")
    return cells[0]


def inject_parameters(source, values, name="notebook"):
    """Returns ``source`` with the top-level assignments ``NAME = ...`` of ``values`` replaced.

    Raises AssertionError when a name is not assigned in ``source``, so that renaming a
    parameter in a notebook fails here instead of silently running the full-size notebook.
    """
    lines = source.splitlines()
    assigned = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            assigned[node.targets[0].id] = (node.lineno - 1, node.end_lineno)
    missing = sorted(set(values) - set(assigned))
    if missing:
        raise AssertionError(f"{name}: parameter cell does not assign {missing}; it has "
                             f"{sorted(assigned)}")
    # Replace from the bottom up so earlier line numbers stay valid.
    for key in sorted(values, key=lambda k: assigned[k][0], reverse=True):
        start, end = assigned[key]
        lines[start:end] = [f"{key} = {values[key]!r}  # injected by tests/test_notebooks.py"]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec that runs ipykernel in this interpreter, with headless inline plots.

    Written to a private folder so that no user-level or system ``python3`` kernelspec (which
    may point at another Python without this package) is picked up.
    """
    directory = tmp_path_factory.mktemp("kernels")
    spec_dir = directory / KERNEL_NAME
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "retinanet tests",
        "language": "python",
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "TF_CPP_MIN_LOG_LEVEL": "2"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return directory


def test_notebook_list_matches_folder():
    on_disk = sorted(path.name for path in NOTEBOOK_DIR.glob("*.ipynb"))
    assert on_disk == NOTEBOOKS, "add new notebooks to SMALL_PARAMETERS in this test"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {index} has outputs; clear them"
            assert cell.execution_count is None, f"{name}: cell {index} has an execution count"
    source = _parameter_cell(notebook, name).source
    inject_parameters(source, SMALL_PARAMETERS[name], name)  # every name is there


def test_inject_parameters_replaces_only_named_values():
    source = "A = 1  # one\nB = (2,\n     3)\nC = 'x'"
    result = inject_parameters(source, {"B": 4})
    namespace = {}
    exec(result, namespace)  # noqa: S102 (test input)
    assert (namespace["A"], namespace["B"], namespace["C"]) == (1, 4, "x")
    with pytest.raises(AssertionError, match="does not assign"):
        inject_parameters(source, {"D": 1})


async def _execute(name, kernel_dir, work_dir):
    """Runs one notebook with its small parameters; returns (seconds, None) or (None, error)."""
    notebook = _read(name)
    cell = _parameter_cell(notebook, name)
    cell.source = inject_parameters(cell.source, SMALL_PARAMETERS[name], name)
    kernel_manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]),
    )
    client = nbclient.NotebookClient(
        notebook,
        km=kernel_manager,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(work_dir)}},  # the kernel's working directory
    )
    start = time.perf_counter()
    try:
        # What the notebook writes with tempfile (datasets, SavedModels) goes to work_dir,
        # which pytest cleans up.
        await client.async_execute(env={**os.environ, "TMPDIR": str(work_dir)})
    except Exception as error:  # noqa: BLE001 (reported by the test of this notebook)
        return None, error
    return time.perf_counter() - start, None


@pytest.fixture(scope="module")
def executed(request, kernel_dir, tmp_path_factory):
    """Runs every notebook whose `test_notebook_runs` is selected, all at once.

    The notebooks run in parallel kernels: most of their time is single-threaded (Python
    start-up, TensorFlow tracing), so on a 2-core machine three kernels finish in about the
    time of the slowest one instead of the sum.
    """
    names = sorted({item.callspec.params["name"] for item in request.session.items
                    if getattr(item, "originalname", None) == "test_notebook_runs"})

    async def run_all():
        runs = [_execute(name, kernel_dir, tmp_path_factory.mktemp(name.split(".")[0]))
                for name in names]
        return dict(zip(names, await asyncio.gather(*runs)))

    return asyncio.run(run_all())


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, executed):
    seconds, error = executed[name]
    if error is not None:
        raise error  # a CellExecutionError shows the failing cell and its traceback
    print(f"{name}: {seconds:.1f} s")
