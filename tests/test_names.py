"Keypoint names of other datasets: flip pairs in any naming convention, CrowdPose's borrowed skeleton, a ground truth of another K."
import json, warnings
import numpy as np, pytest
from adpd.core import COCO17, MPII16, KeypointSpec, flip_pairs_from_names, spec_from_coco_category
from adpd.data import CocoKeypoints, load_coco_json
from adpd.evaluate import coco_keypoint_eval

def no_warnings(f, *a, **k):
    "Call `f`, failing on any warning."
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        return f(*a, **k)

# --- flip pairs from names -----------------------------------------------------------

AIC = ['right_shoulder', 'right_elbow', 'right_wrist', 'left_shoulder', 'left_elbow', 'left_wrist', 'right_hip',
       'right_knee', 'right_ankle', 'left_hip', 'left_knee', 'left_ankle', 'head_top', 'neck']
AIC_PAIRS = ((3, 0), (4, 1), (5, 2), (9, 6), (10, 7), (11, 8))
CROWDPOSE = ['left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip',
             'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle', 'head', 'neck']
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
                 [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]

def test_coco_and_mpii_pairs_unchanged():
    assert flip_pairs_from_names(COCO17.names) == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    assert flip_pairs_from_names(MPII16.names) == ((3, 2), (4, 1), (5, 0), (13, 12), (14, 11), (15, 10))
    assert no_warnings(flip_pairs_from_names, COCO17.names) == COCO17.flip_pairs

def test_snake_case_datasets():
    assert flip_pairs_from_names(AIC) == AIC_PAIRS
    assert flip_pairs_from_names(CROWDPOSE) == tuple((i, i + 1) for i in range(0, 12, 2))

@pytest.mark.parametrize('style', [
    lambda s, x: f"{s.title()} {x.title()}",             # AI Challenger as some converters write it: "Left Shoulder"
    lambda s, x: f"{s.upper()} {x.upper()}",
    lambda s, x: f"{s}-{x}",
    lambda s, x: f"{s}.{x}",
    lambda s, x: f"{x.title()} {s.title()}",             # "Shoulder Left"
    lambda s, x: f"{x}-{s}",
    lambda s, x: f"{s}{x.title()}",                      # camelCase: leftShoulder
    lambda s, x: f"{s[0].upper()}{x.title()}",           # OpenPose: LShoulder
    lambda s, x: f"{s[0]}.{x}",                          # l.shoulder
    lambda s, x: f"{x} {s[0].upper()}",                  # "shoulder R"
])
def test_aic_names_in_other_conventions(style):
    names = [style(n.split('_')[0], n.split('_', 1)[1]) if n.startswith(('left_', 'right_')) else n for n in AIC]
    assert flip_pairs_from_names(names) == AIC_PAIRS, names

def test_side_anywhere_and_mixed_conventions():
    assert flip_pairs_from_names(['top_left_corner', 'top_right_corner', 'centre']) == ((0, 1),)
    assert flip_pairs_from_names(['Left Eye', 'right_eye', 'NOSE', 'EAR_R', 'ear-l']) == ((0, 1), (4, 3))

def test_no_false_pairs():
    "Single letters, words that merely start with l or r, and l/r inside a name are not sides."
    for names in (['lip', 'rip'], ['l', 'r'], ['L', 'R'], ['ear', 'rear', 'lear'], ['lhip', 'rhip'], ['Lip', 'Rip'],
                  ['hand_l_1', 'hand_r_1'], ['LEFTY', 'RIGHTY'], ['lr', 'rl'], ['leg', 'reg']):
        assert flip_pairs_from_names(names) == (), names

def test_unpaired_sided_names_warn():
    with pytest.warns(UserWarning, match=r"'odd'.*left_hand.*right_foot"):
        s = KeypointSpec('odd', names=['nose', 'left_hand', 'right_foot'], skeleton=[], sigmas=[.05] * 3)
    assert s.flip_pairs == ()
    with pytest.warns(UserWarning, match=r"'squid'.*leftshoulder"):
        spec_from_coco_category(dict(name='squid', keypoints=['leftshoulder', 'rightshoulder', 'beak']))
    # explicit pairs, or names that pair, or no sided names: silent
    s = no_warnings(KeypointSpec, 'odd', names=['nose', 'left_hand', 'right_foot'], skeleton=[], sigmas=[.05] * 3, flip_pairs=[[1, 2]])
    assert s.flip_pairs == ((1, 2),)      # a list of lists is taken (it was a TypeError)
    no_warnings(KeypointSpec, 'aic', names=AIC, skeleton=[], sigmas=[.05] * 14)
    no_warnings(KeypointSpec, 'blob', names=['lip', 'r', 'ear'], skeleton=[], sigmas=[.05] * 3)
    no_warnings(spec_from_coco_category, dict(name='person', keypoints=list(COCO17.names)))

def test_spec_from_aic_category_flips():
    cat = dict(name='AIC person', keypoints=[' '.join(w.title() for w in n.split('_')) for n in AIC])
    s = no_warnings(spec_from_coco_category, cat)
    assert s.flip_pairs == AIC_PAIRS
    assert s.names[s.flip_index[0]] == 'Left Shoulder'

# --- CrowdPose: a 14-keypoint category carrying the COCO-17 skeleton --------------------

def crowdpose_cat(): return dict(id=1, name='person', keypoints=list(CROWDPOSE), skeleton=COCO_SKELETON)

def test_crowdpose_category_drops_foreign_links():
    with pytest.warns(UserWarning, match=r"'person'.*\[16, 14\].*\[17, 15\].*\[15, 13\]"):
        s = spec_from_coco_category(crowdpose_cat())
    assert s.K == 14 and len(s.skeleton) == len(COCO_SKELETON) - 3
    assert s.skeleton == tuple((a - 1, b - 1) for a, b in COCO_SKELETON if max(a, b) <= 14)
    assert s.flip_pairs == tuple((i, i + 1) for i in range(0, 12, 2))
    # in range: silent; a 0 (not 1-based) link is dropped too
    no_warnings(spec_from_coco_category, dict(crowdpose_cat(), skeleton=[[1, 2], [13, 14]]))
    with pytest.warns(UserWarning, match=r"\[0, 1\]"): s = spec_from_coco_category(dict(crowdpose_cat(), skeleton=[[0, 1], [1, 2]]))
    assert s.skeleton == ((0, 1),)
    # KeypointSpec itself still refuses out-of-range pairs
    with pytest.raises(ValueError, match='out of range'):
        KeypointSpec('x', names=CROWDPOSE, skeleton=[(0, 16)], sigmas=[.05] * 14)
    with pytest.raises(ValueError, match='out of range'):
        KeypointSpec('x', names=CROWDPOSE, skeleton=[], sigmas=[.05] * 14, flip_pairs=[(0, 16)])

def gt_json(path, K_names=14, K_anns=14, n_img=2, skeleton=COCO_SKELETON):
    "A tiny COCO keypoint json: one person per image, a category of `K_names` names, annotations of `K_anns` joints."
    rng = np.random.default_rng(0)
    names = CROWDPOSE[:K_names] + [f'extra_{i}' for i in range(K_names - 14)]
    images = [dict(id=i + 1, file_name=f'{i}.jpg', width=320, height=240) for i in range(n_img)]
    anns = []
    for i in range(n_img):
        j = np.concatenate([rng.uniform(20, 120, (K_anns, 2)), np.full((K_anns, 1), 2.)], 1)
        anns.append(dict(id=i + 1, image_id=i + 1, category_id=1, iscrowd=0, bbox=[10., 10., 120., 120.], area=1e4,
                         keypoints=j.ravel().tolist(), num_keypoints=K_anns))
    path.write_text(json.dumps(dict(images=images, annotations=anns,
                                    categories=[dict(crowdpose_cat(), keypoints=names, skeleton=skeleton)])))
    return path

def test_crowdpose_json_loads(tmp_path):
    ann = gt_json(tmp_path / 'crowdpose.json')
    with pytest.warns(UserWarning, match='skeleton'):
        ds = CocoKeypoints(ann, tmp_path, train=False, check_files=False)
    assert ds.spec.K == 14 and len(ds) == 2

# --- the COCO metric against a ground truth of another K -----------------------------------

def results(n_img, K, rng=np.random.default_rng(1)):
    return [dict(image_id=i + 1, category_id=1, score=.9,
                 keypoints=np.concatenate([rng.uniform(20, 120, (K, 2)), np.ones((K, 1))], 1).ravel().tolist())
            for i in range(n_img)]

def test_k17_predictions_against_k14_ground_truth(tmp_path):
    ann = gt_json(tmp_path / 'gt14.json', skeleton=[])
    coco = load_coco_json(ann)
    with pytest.raises(ValueError, match=r"'person'.*14 keypoints.*17"):     # was a numpy broadcast error inside COCOeval
        coco_keypoint_eval(coco, results(2, 17), COCO17.sigmas)
    with pytest.raises(ValueError, match=r"gt14\.json.*14.*17"):
        coco_keypoint_eval(coco, results(2, 17), COCO17.sigmas, ann_file=ann)
    with pytest.raises(ValueError, match=r"gt14\.json.*14.*17"):
        coco_keypoint_eval(coco, results(2, 17), COCO17.sigmas, cat_id=1, ann_file=ann)
    # 14 predictions with 17 sigmas: the sigmas are checked against the ground truth too
    with pytest.raises(ValueError, match=r"gt14\.json.*sigmas"):
        coco_keypoint_eval(coco, results(2, 14), COCO17.sigmas, ann_file=ann)
    # matching K works
    r = coco_keypoint_eval(coco, results(2, 14), np.full(14, .05), ann_file=ann)
    assert 0 <= r['AP'] <= 1

def test_wrong_k_annotations_through_a_detection_file(tmp_path):
    "The category says 14 keypoints, the annotations carry 17: refused when the detection dataset is built, before any run."
    ann = gt_json(tmp_path / 'mixed.json', K_names=14, K_anns=17, skeleton=[])
    det = tmp_path / 'dets.json'
    det.write_text(json.dumps([dict(image_id=i + 1, category_id=1, bbox=[10., 10., 120., 120.], score=.9) for i in range(2)]))
    with pytest.raises(ValueError, match=r"mixed\.json: annotation 1 has 17 keypoints, category has 14"):
        CocoKeypoints(ann, tmp_path, train=False, det_file=det, check_files=False)
