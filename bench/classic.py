"""Baselines structured like the classic HRNet-family code (`JointsDataset.__getitem__`, `get_final_preds`,
`generate_target`), written here for side-by-side benchmarks. Same maths, the classic structure:
full-image colour conversion and flip, three-point affine, per-joint Python loops, CPU normalisation."""
import math
import cv2, numpy as np, torch
import torchvision.transforms as T

def _rotate(p, r): return np.array([p[0] * np.cos(r) - p[1] * np.sin(r), p[0] * np.sin(r) + p[1] * np.cos(r)])
def _third(a, b): d = a - b; return b + np.array([-d[1], d[0]], np.float32)

def affine_transform_3pt(center, scale, rot, out_size, inv=False):
    src_w, (dst_w, dst_h) = scale[0] * 200, out_size
    src_dir, dst_dir = _rotate([0, src_w * -.5], np.pi * rot / 180), np.array([0, dst_w * -.5], np.float32)
    src, dst = np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0] = [dst_w * .5, dst_h * .5]; dst[1] = dst[0] + dst_dir
    src[2], dst[2] = _third(src[0], src[1]), _third(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)

def affine_point(pt, t): return (t @ np.array([pt[0], pt[1], 1.]))[:2]

def classic_target(joints, vis, heatmap_size, image_size, sigma=2):
    "One joint at a time, as `generate_target`."
    K = len(joints); W, H = heatmap_size
    tw = vis[:, 0].astype(np.float32).copy(); target = np.zeros((K, H, W), np.float32); tmp = sigma * 3
    stride = np.array(image_size) / np.array(heatmap_size)
    for j in range(K):
        mx, my = int(joints[j][0] / stride[0] + .5), int(joints[j][1] / stride[1] + .5)
        ul, br = [int(mx - tmp), int(my - tmp)], [int(mx + tmp + 1), int(my + tmp + 1)]
        if ul[0] >= W or ul[1] >= H or br[0] < 0 or br[1] < 0: tw[j] = 0; continue
        size = 2 * tmp + 1; x = np.arange(0, size, 1, np.float32); y = x[:, None]; x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
        gx, gy = (max(0, -ul[0]), min(br[0], W) - ul[0]), (max(0, -ul[1]), min(br[1], H) - ul[1])
        ix, iy = (max(0, ul[0]), min(br[0], W)), (max(0, ul[1]), min(br[1], H))
        if tw[j] > .5: target[j][iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return target, tw

class ClassicJointsDataset:
    "The classic training sample: everything in `__getitem__`, driven by the augmentation draws of `ds` (an adpd dataset)."
    def __init__(self, ds):
        self.ds = ds
        self.tfm = T.Compose([T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        ds, db = self.ds, self.ds.db
        img = cv2.imread(str(db.file[i]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        joints, vis = db.joints[i][:, :2].copy(), np.repeat(np.minimum(db.joints[i][:, 2:], 1), 3, 1)
        aug = ds.sample_aug(i)                                    # the same random draws as adpd
        c, s, r = np.array(aug['center'], np.float64), aug['scale'], aug['rot']
        if aug['flip']:
            img = img[:, ::-1, :]
            joints[:, 0] = img.shape[1] - joints[:, 0] - 1
            for a, b in ds.spec.flip_pairs:                       # per-pair swap, as `fliplr_joints`
                joints[[a, b]] = joints[[b, a]]; vis[[a, b]] = vis[[b, a]]
            c[0] = img.shape[1] - c[0] - 1
        trans = affine_transform_3pt(c, s, r, ds.image_size)
        inp = cv2.warpAffine(img, trans, tuple(ds.image_size), flags=cv2.INTER_LINEAR)
        inp = self.tfm(inp)
        for k in range(len(joints)):                              # per-joint loop
            if vis[k, 0] > 0: joints[k] = affine_point(joints[k], trans)
        target, tw = classic_target(joints, vis, ds.heatmap_size, ds.image_size)
        return inp, torch.from_numpy(target), torch.from_numpy(tw)

def classic_final_preds(hm, center, scale):
    "`get_final_preds`: numpy argmax, per-joint quarter-pixel loop, per-sample inverse affine."
    B, K, H, W = hm.shape
    flat = hm.reshape(B, K, -1)
    idx, maxvals = np.argmax(flat, 2).reshape(B, K, 1), np.amax(flat, 2).reshape(B, K, 1)
    coords = np.tile(idx, (1, 1, 2)).astype(np.float32)
    coords[:, :, 0] = coords[:, :, 0] % W
    coords[:, :, 1] = np.floor(coords[:, :, 1] / W)
    coords *= np.tile(np.greater(maxvals, 0.0), (1, 1, 2)).astype(np.float32)
    for n in range(B):
        for p in range(K):
            h = hm[n][p]
            px, py = int(math.floor(coords[n][p][0] + .5)), int(math.floor(coords[n][p][1] + .5))
            if 1 < px < W - 1 and 1 < py < H - 1:
                coords[n][p] += np.sign(np.array([h[py][px + 1] - h[py][px - 1], h[py + 1][px] - h[py - 1][px]])) * .25
    preds = coords.copy()
    for n in range(B):
        t = affine_transform_3pt(center[n], scale[n], 0, [W, H], inv=True)
        for p in range(K): preds[n, p] = affine_point(coords[n, p], t)
    return preds, maxvals
