import warnings, pytest
from adpd.core import shared_data

def fixture_dir(name):
    "A shared fixture folder, or skip the test with the reason."
    d = shared_data(name)
    if d is None or not d.exists():
        pytest.skip(f"shared fixture '{name}' not found (set ADPD_SHARED_DATA or put shared/data beside the checkout)")
    return d

@pytest.fixture(scope='session', autouse=True)
def own_cache(tmp_path_factory):
    "The tests build their datasets with a cache of their own, never the user's `~/.cache/adpd` (which may hold another version's)."
    import os
    old, os.environ['ADPD_CACHE'] = os.environ.get('ADPD_CACHE'), str(tmp_path_factory.mktemp('adpd-cache'))
    yield
    if old is None: os.environ.pop('ADPD_CACHE', None)
    else: os.environ['ADPD_CACHE'] = old

@pytest.fixture
def coco_tiny(): return fixture_dir('coco_tiny')

@pytest.fixture
def mpii_tiny(): return fixture_dir('mpii_tiny')

@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    "A synthetic COCO-layout folder (splits train, val) and a tiny teacher checkpoint, once per test module."
    import torch
    from adpd.models import create_pose_model
    from adpd.synthetic import make_synthetic_coco
    root = tmp_path_factory.mktemp('synth')
    make_synthetic_coco(root, n_images=16, seed=0)
    torch.manual_seed(0)
    torch.save(create_pose_model('tiny-w16').state_dict(), root / 'teacher.pth')
    return root

def coco_args(root, out, *extra, teacher_weights=True, teacher='teacher.pth'):
    "`adpd_train coco` flags for two quick ADPD epochs of tiny models on `synth`'s folder `root`, into `out`."
    tw = ['--teacher-weights', str(root / teacher)] if teacher_weights else []
    return ['coco', '--data-root', str(root), '--train-split', 'train', '--val-split', 'val', '--student', 'tiny-w8',
            '--teacher', 'tiny-w16', *tw, '--kd', 'adpd', '--epochs', '2',
            '--lr-steps', '1', '--bs', '4', '--image-size', '64x48', '--eval-every', '0', '--no-bar', '--threads', '1', '--out', str(out), *extra]

@pytest.fixture(scope='module')
def finished(synth, tmp_path_factory):
    "A run folder of two uninterrupted ADPD epochs (`coco_args`), once per test module."
    from adpd.train import main
    out = tmp_path_factory.mktemp('runs') / 'done'
    assert main(coco_args(synth, out)) == 0
    return out

def quiet(f, *a, **k):
    """`f(*a, **k)` without the warnings the tests expect: the counted skips of a dataset (`SkipWarning`) and torch's deprecation
    notices for its own exporters and tracer; any other warning still shows."""
    from adpd.data import SkipWarning
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', SkipWarning)
        for cat in (FutureWarning, DeprecationWarning, UserWarning): warnings.filterwarnings('ignore', category=cat, module=r'torch\.')
        warnings.filterwarnings('ignore', message='Converting a tensor to a Python boolean')      # the tracer's TracerWarning
        return f(*a, **k)

def warned(f, *a, **k):
    "`(f(*a, **k), [the messages of every warning it raised])`."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        return f(*a, **k), [str(x.message) for x in w]
