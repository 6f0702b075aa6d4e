import warnings, pytest
from adpd.core import shared_data

def fixture_dir(name):
    "A shared fixture folder, or skip the test with the reason."
    d = shared_data(name)
    if d is None or not d.exists():
        pytest.skip(f"shared fixture '{name}' not found (set ADPD_SHARED_DATA or put shared/data beside the checkout)")
    return d

@pytest.fixture
def coco_tiny(): return fixture_dir('coco_tiny')

@pytest.fixture
def mpii_tiny(): return fixture_dir('mpii_tiny')
