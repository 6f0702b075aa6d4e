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

import json, re
LOCAL_PATH = re.compile(r'(/work/|/home/|/Users/|/tmp/|/root/|[\\/]\.venv[\\/]|site-packages)')

def local_paths(nb_path) -> list:
    "`(cell, excerpt)` for each output of the notebook `nb_path` that names a path of the machine that ran it."
    nb = json.loads(Path(nb_path).read_text())
    out = []
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            text = json.dumps(o.get('text', '')) + json.dumps(o.get('data', {}).get('text/plain', '')) + json.dumps(o.get('traceback', ''))
            m = LOCAL_PATH.search(text)
            if m: out.append((i, text[max(0, m.start() - 40):m.end() + 60]))
    return out

def test_notebooks_carry_no_local_paths(tmp_path):
    "A checked-in output naming a file of the machine that ran it (a warning's source line, a venv) is noise for every reader."
    bad = {p.name: local_paths(p) for p in sorted((ROOT / 'nbs').glob('*.ipynb'))}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, '\n'.join(f'{k}, cell {i}: …{t}…' for k, v in bad.items() for i, t in v)
    nb = nbformat.v4.new_notebook()                       # the check itself finds one
    nb.cells = [nbformat.v4.new_code_cell('import x', outputs=[nbformat.v4.new_output('stream', name='stderr',
                text='/work/main/.venv/lib/python3.11/site-packages/torch/jit/_script.py:1491: FutureWarning')])]
    nbformat.write(nb, tmp_path / 'x.ipynb')
    assert [i for i, _ in local_paths(tmp_path / 'x.ipynb')] == [0]
