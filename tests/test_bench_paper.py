"`bench/bench_paper.py --smoke`: the experiment's script runs end to end and writes every output it promises."
import csv, io, json, subprocess, sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / 'bench' / 'bench_paper.py'

def test_smoke(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--out', str(tmp_path / 'run')], capture_output=True, text=True,
                       timeout=300, cwd=SCRIPT.parents[1])
    assert p.returncode == 0, p.stderr[-3000:]
    res = tmp_path / 'run' / 'smoke-results'
    rows = list(csv.DictReader(io.StringIO((res / 'results.csv').read_text())))
    assert [r['kd'] for r in rows] == ['none', 'fpd', 'kl', 'dkd', 'adpd', 'adpd_published']
    assert all(0 <= float(r['AP']) <= 1 for r in rows)
    curves = list(csv.DictReader(io.StringIO((res / 'curves.csv').read_text())))
    assert len(curves) == 6 and all(c['AP'] not in ('', 'None') for c in curves)       # AP after every epoch, per member
    assert (res / 'curves.png').read_bytes()[:4] == b'\x89PNG'
    md = (res / 'results.md').read_text()
    assert '| ADPD (default) − DKD (fixed weights) |' in md and '| ADPD (published) |' in md
    meta = json.loads((res / 'meta.json').read_text())
    assert meta['protocol']['epochs'] == 12 and len(meta['commit']) == 40 and 'cores' in meta['machine']
    # each member is a standalone student of its own
    assert all((tmp_path / 'run' / 'seed100' / n / 'final.pth').is_file() for n in ('none', 'adpd_published'))
