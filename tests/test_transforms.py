"Round trips of the geometry and the heatmap codec."
import numpy as np, pytest, torch
from adpd.core import COCO17
from adpd.transforms import (get_affine, affine_points, compose_affine, box_to_center_scale, encode_heatmaps,
                             decode_heatmaps, flip_back, heatmap_to_image, half_body_center_scale)

@pytest.mark.parametrize('seed', range(3))
def test_affine_then_inverse_is_exact(seed):
    rng = np.random.default_rng(seed)
    c, s, r = rng.uniform(0, 800, (64, 2)), rng.uniform(.1, 4, (64, 2)), rng.uniform(-90, 90, 64)
    pts = rng.uniform(-100, 900, (64, 17, 2))
    for size in [(192, 256), (48, 64), (256, 256)]:
        back = affine_points(affine_points(pts, get_affine(c, s, size, r)), get_affine(c, s, size, r, inv=True))
        assert np.abs(back - pts).max() < 1e-3

def test_affine_is_a_similarity_centred_on_the_box():
    c, s = box_to_center_scale([[100, 50, 90, 120]], 192 / 256)
    M = get_affine(c, s, (192, 256), rot=30.)
    np.testing.assert_allclose(affine_points(c[:, None], M)[0, 0], [96, 128], atol=1e-9)
    A = M[0, :, :2]
    np.testing.assert_allclose(A @ A.T, np.eye(2) * (192 / (s[0, 0] * 200)) ** 2, atol=1e-9)

@pytest.mark.parametrize('sigma', [1.5, 2., 3.])
def test_encode_decode_within_a_quarter_pixel(sigma):
    kp = torch.rand(128, 17, 2) * torch.tensor([38., 54]) + 5
    hm, tw = encode_heatmaps(kp, torch.ones(128, 17), (48, 64), sigma, subpixel=True)
    dec, _ = decode_heatmaps(hm)
    assert (dec - kp).abs().max() <= .25 + 1e-4 and (tw == 1).all()

def test_grid_rounded_targets_decode_to_the_rounded_centre():
    kp = torch.rand(64, 17, 2) * torch.tensor([38., 54]) + 5
    dec, _ = decode_heatmaps(encode_heatmaps(kp, torch.ones(64, 17), (48, 64))[0])
    torch.testing.assert_close(dec, torch.trunc(kp + .5))

def test_decode_matches_a_per_joint_reference():
    hm = torch.rand(3, 5, 16, 12)
    kp, mv = decode_heatmaps(hm)
    for b in range(3):
        for k in range(5):
            h = hm[b, k]; y, x = divmod(int(h.argmax()), 12)
            e = torch.tensor([x, y], dtype=torch.float32)
            if 1 < x < 11 and 1 < y < 15:
                e += .25 * torch.sign(torch.stack([h[y, x + 1] - h[y, x - 1], h[y + 1, x] - h[y - 1, x]]))
            torch.testing.assert_close(kp[b, k], e); assert mv[b, k] == h.max()

def _classic_weight(x, y, W, H, sigma):
    "The HRNet family's `generate_target` weight rule for one labelled joint at (x, y) heatmap pixels."
    mx, my, r = int(x + .5), int(y + .5), sigma * 3
    ul, br = (int(mx - r), int(my - r)), (int(mx + r + 1), int(my + r + 1))
    return float(not (ul[0] >= W or ul[1] >= H or br[0] < 0 or br[1] < 0))

def test_unlabelled_and_far_joints_get_the_classic_weights():
    kp = torch.tensor([[[10., 10], [10, 10], [-7.6, 10], [-8.6, 10], [60, 80], [53.4, 10]]])
    hm, tw = encode_heatmaps(kp, torch.tensor([[2, 0, 1, 1, 1, 1]]), (48, 64))
    # -7.6 rounds to -7: the window's far corner is column 0, so the classic code keeps weight 1 (with an empty map)
    assert tw.tolist() == [[1, 0, 1, 0, 0, 1]] and hm[0, 1:4].abs().sum() == 0 and hm[0, 4].abs().sum() == 0
    g = np.arange(-14, 64, .1)
    for sigma in (1., 2., 3., 1.5):
        kp = torch.tensor(np.stack([np.stack([g, np.full_like(g, 30)], -1), np.stack([np.full_like(g, 20), g], -1)]), dtype=torch.float32)
        tw = encode_heatmaps(kp, torch.ones(kp.shape[:2]), (48, 64), sigma)[1]
        ref = [[_classic_weight(float(x), float(y), 48, 64, sigma) for x, y in row] for row in kp]
        assert tw.tolist() == ref, sigma

def test_half_body_tries_the_upper_body_first_with_the_classic_probability():
    j = np.zeros((17, 3)); j[:, 2] = 2; j[:, 0] = np.arange(17) * 3; j[:, 1] = np.arange(17) * 10
    rng = np.random.default_rng(0)
    up = np.mean([half_body_center_scale(j, COCO17, .75, rng)[0][1] < 100 for _ in range(4000)])
    assert abs(up - .6915) < .025, up      # P(randn() < 0.5): what the HRNet family's code draws
    up = np.mean([half_body_center_scale(j, COCO17, .75, rng, upper_p=.5)[0][1] < 100 for _ in range(4000)])
    assert abs(up - .5) < .025, up

def test_flip_back_and_image_mapping():
    hm = torch.rand(2, 17, 8, 6)
    assert torch.equal(flip_back(hm, COCO17.flip_index)[:, 5], hm[:, 6].flip(-1))
    c, s = np.array([[320., 240]]), np.array([[1., 4 / 3]])
    # the heatmap centre maps to the crop centre, and one heatmap pixel is 200/48 image pixels
    np.testing.assert_allclose(heatmap_to_image(np.array([[[24., 32], [25, 32]]]), c, s, (48, 64))[0],
                               [[320, 240], [320 + 200 / 48, 240]], atol=1e-9)
