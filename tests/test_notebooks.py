"`nbdev_test` skips the cells flagged in `settings.ini`'s `tst_flags` (nbdev 2 splits them on spaces), and runs them when asked."
import subprocess, sys
from pathlib import Path
import nbformat, pytest

ROOT = Path(__file__).resolve().parents[1]
NBDEV_TEST = Path(sys.executable).parent / 'nbdev_test'

def flagged_notebook(path, flags):
    "A notebook with a plain cell and, per flag, a cell under that flag that fails if it runs."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('x = 1')] + [nbformat.v4.new_code_cell(f"#| {f}\nraise RuntimeError('the {f} cell ran')") for f in flags]
    nbformat.write(nb, path)
    return path

def run(nb, *extra):
    return subprocess.run([str(NBDEV_TEST), '--path', str(nb), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)

def test_flagged_cells_are_skipped_and_run_on_request(tmp_path):
    if not NBDEV_TEST.exists(): pytest.skip(f'nbdev_test not installed in {NBDEV_TEST.parent}')
    flags = ('slow', 'cuda', 'coco', 'browser')
    nb = flagged_notebook(tmp_path / 'flags.ipynb', flags)
    r = run(nb)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]          # every flagged cell skipped
    r = run(nb, '--flags', 'slow')
    assert r.returncode != 0 and 'the slow cell ran' in r.stdout + r.stderr  # and run when the flag is given
