"""A real browser: JupyterLab headless on localhost, the walkthrough run in Chromium, the inspector rendered and a slider moved.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (`.ci/browser-deps` installs them); skipped
without them. The walkthrough runs as a copy in a temporary folder with its tour-settings cell made tiny (a few images,
one epoch), so the browser sees every cell of the real notebook in well under a minute of compute. Set
`ADPD_SCREENSHOT_DIR` to keep a copy of the screenshots."""
import ast, json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGH = ROOT / 'nbs' / '90_tutorial.walkthrough.ipynb'
MARKER = '# tour settings'
FAST_SETTINGS = f"""{MARKER} (the browser test's tiny copy)
data_root = 'data'
n_images, bs = 40, 8
student_epochs, lr = 1, 5e-4"""
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--disable-dev-shm-usage', '--window-size=1400,1000']
TIMEOUT = 240          # seconds for JupyterLab to run every cell of the copy

def _exe(name, *fallbacks):
    for n in (name, *fallbacks):
        p = shutil.which(n) or (f'/usr/bin/{n}' if Path(f'/usr/bin/{n}').exists() else None)
        if p: return p
    return None

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def _fast_copy(dst: Path):
    "The walkthrough with its tour-settings cell replaced by tiny settings, written to `dst`."
    nb = json.loads(WALKTHROUGH.read_text())
    cells = [c for c in nb['cells'] if c['cell_type'] == 'code' and ''.join(c['source']).lstrip().startswith(MARKER)]
    assert len(cells) == 1, f"{WALKTHROUGH.name}: expected one code cell starting with {MARKER!r}, found {len(cells)}"
    names = lambda src: {n.id for a in ast.walk(ast.parse(src)) if isinstance(a, ast.Assign)
                         for t in a.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    orig = ''.join(cells[0]['source'])
    assert names(orig) == names(FAST_SETTINGS), f"the tour settings changed: {sorted(names(orig))}; update FAST_SETTINGS"
    cells[0]['source'] = FAST_SETTINGS
    for c in nb['cells']:
        if c['cell_type'] == 'code': c['outputs'], c['execution_count'] = [], None
    dst.write_text(json.dumps(nb))

def _request(url, token, method='GET'):
    req = urllib.request.Request(url, method=method, headers={'Authorization': f'token {token}'})
    with urllib.request.urlopen(req, timeout=5) as r: return r.status

@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free localhost port, serving a tiny copy of the walkthrough; shut down afterwards."
    work = tmp_path / 'work'
    work.mkdir()
    _fast_copy(work / 'walkthrough.ipynb')
    cfg = tmp_path / 'jupyter-config'
    (cfg / 'labconfig').mkdir(parents=True)
    # no announcement toasts (and no news fetch) in a fresh profile
    (cfg / 'labconfig' / 'page_config.json').write_text(json.dumps(
        {'disabledExtensions': {'@jupyterlab/apputils-extension:announcements': True}}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ('MPLBACKEND', 'JUPYTER_TOKEN')}
    env.update(JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(tmp_path / 'runtime'),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / 'lab-settings'), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / 'workspaces'),
               IPYTHONDIR=str(tmp_path / 'ipython'), PYTHONUNBUFFERED='1')
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.open_browser=False', '--allow-root',
           '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}', '--ServerApp.port_retries=0',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}', '--expose-app-in-browser',
           '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    log = open(tmp_path / 'jupyterlab.log', 'w')
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f'http://127.0.0.1:{port}'
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            try:
                if _request(f'{base}/api/status', token) == 200: break
            except OSError: pass
            if time.time() - t0 > 90: pytest.fail('JupyterLab did not answer on localhost within 90 s')
            time.sleep(.5)
        yield dict(base=base, token=token, work=work, log=tmp_path / 'jupyterlab.log')
    finally:
        try: _request(f'{base}/api/shutdown', token, 'POST')          # stops the kernels too
        except OSError: pass
        try: proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try: proc.wait(10)
            except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()

@pytest.fixture
def browser(tmp_path):
    "Headless Chromium through chromedriver, or a skip saying what is missing."
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium not installed (run .ci/browser-deps)')
    from selenium.webdriver.chrome.service import Service
    chromium, driver = _exe('chromium', 'chromium-browser'), _exe('chromedriver')
    if not chromium or not driver: pytest.skip('chromium / chromedriver not installed (run .ci/browser-deps: apt-get install chromium chromium-driver)')
    os.environ.setdefault('SE_AVOID_STATS', 'true')
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in CHROMIUM_ARGS: opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver, log_output=str(tmp_path / 'chromedriver.log')), options=opts)
    try: yield d
    finally: d.quit()

KERNEL_IDLE = """const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return k ? k.status : null;"""
ERRORS = """return [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')]
  .map(e => e.innerText.slice(-2000));"""
INSPECTOR = """const box = document.querySelector('.adpd-inspector');
if (!box) return null;
const img = box.querySelector('img'), table = box.querySelector('table.adpd-terms');
const slider = [...box.querySelectorAll('.widget-slider')].find(s => (s.querySelector('.widget-label') || {}).textContent === 'T');
return {img: img && img.complete && img.naturalWidth > 0 ? img.src : null, width: img ? img.naturalWidth : 0,
        table: table ? table.innerText : null,
        T: slider ? slider.querySelector('.widget-readout').innerText : null};"""
T_HANDLE = """return [...document.querySelectorAll('.adpd-inspector .widget-slider')]
  .find(s => (s.querySelector('.widget-label') || {}).textContent === 'T').querySelector('.noUi-handle');"""

def _wait(cond, timeout, what, errors=None, step=1.):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if errors:
            errs = errors()
            if errs: pytest.fail(f'an error in the notebook while waiting for {what}:\n' + '\n---\n'.join(errs))
        v = cond()
        if v: return v
        time.sleep(step)
    pytest.fail(f'timed out after {timeout} s waiting for {what}')

def test_walkthrough_inspector_in_chromium(lab, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys
    d = browser
    d.set_page_load_timeout(90)
    d.get(f"{lab['base']}/lab/tree/walkthrough.ipynb?token={lab['token']}")
    _wait(lambda: d.execute_script(KERNEL_IDLE) == 'idle', 120, 'JupyterLab to open the notebook with an idle kernel')
    d.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    errors = lambda: d.execute_script(ERRORS)
    t0 = time.time()
    first = _wait(lambda: (lambda v: v if v and v['img'] and v['table'] and v['T'] else None)(d.execute_script(INSPECTOR)),
                  TIMEOUT, 'the inspector widget to render', errors, 2.)
    _wait(lambda: d.execute_script(KERNEL_IDLE) == 'idle' and d.execute_script(
          "return !document.querySelector('.jp-InputArea-prompt') || ![...document.querySelectorAll('.jp-InputArea-prompt')].some(p => p.innerText.includes('*'))"),
          TIMEOUT - (time.time() - t0), 'all cells to finish', errors, 2.)
    assert first['width'] > 300 and 'BiKD' in first['table'], first
    before = d.execute_script(INSPECTOR)               # after the cells that set values from code
    # move the T slider one step with the keyboard, as a user would
    handle = d.execute_script(T_HANDLE)
    d.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
    handle.click()
    handle.send_keys(Keys.ARROW_RIGHT)
    moved = _wait(lambda: (lambda v: v if v and v['img'] and v['img'] != before['img'] and v['table'] != before['table'] else None)(
                  d.execute_script(INSPECTOR)), 60, 'the inspector to redraw after moving T', errors, .5)
    assert float(moved['T']) == float(before['T']) + .25, (before['T'], moved['T'])
    _wait(lambda: d.execute_script(KERNEL_IDLE) == 'idle', 30, 'the kernel to finish the redraw')
    box = d.find_element('css selector', '.adpd-inspector')
    d.execute_script("arguments[0].scrollIntoView({block: 'start'});", box)
    time.sleep(.5)
    shots = [tmp_path / 'lab.png', tmp_path / 'inspector.png']
    d.save_screenshot(str(shots[0]))
    box.screenshot(str(shots[1]))
    for s in shots: assert s.read_bytes()[:4] == b'\x89PNG' and s.stat().st_size > 10_000, s
    keep = os.environ.get('ADPD_SCREENSHOT_DIR')
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for s in shots: shutil.copy(s, Path(keep) / s.name)
