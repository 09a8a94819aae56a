"""Golden-value tests for utils/metrics.py; every expected number is worked out by hand in the comments."""

import numpy as np
import pytest
import torch

from utils.metrics import (ConfusionMatrix, ap_per_class, bbox_ioa, box_iou, compute_ap, fitness, process_batch, smooth,
                           wh_iou)
from utils.plots import plot_pr_curves

IOUV = torch.linspace(0.5, 0.95, 10)  # 0.50, 0.55, ..., 0.95


# ---------------------------------------------------------------------------------------------- compute_ap
def test_compute_ap_perfect_detector_is_0995():
    # recall [.5, 1], precision [1, 1] -> mrec [0, .5, 1, 1], envelope [1, 1, 1, 0].
    # 101 samples x = k/100: k = 0..99 read 1, k = 100 reads the sentinel 0 (last of the duplicated x = 1).
    # trapezoid: 0.01 * (sum - (first + last) / 2) = 0.01 * (100 - 0.5) = 0.995 (upstream's known ceiling)
    ap, mpre, mrec = compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))
    assert ap == pytest.approx(0.995, abs=1e-12)
    np.testing.assert_array_equal(mrec, [0, 0.5, 1, 1])
    np.testing.assert_array_equal(mpre, [1, 1, 1, 0])


def test_compute_ap_tp_fp_tp():
    # 2 labels; ranked detections TP, FP, TP -> recall [.5, .5, 1], precision [1, .5, 2/3].
    # mrec [0, .5, .5, 1, 1], mpre [1, 1, .5, 2/3, 0] -> envelope [1, 1, 2/3, 2/3, 0].
    # samples: k = 0..49 -> 1 (50 values), k = 50..99 -> 2/3 (np.interp takes the right side of the
    # duplicated x = .5), k = 100 -> 0.  sum = 50 + 50 * 2/3 = 83.3333; minus (1 + 0) / 2 -> 82.8333 * 0.01
    ap, mpre, _ = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    np.testing.assert_allclose(mpre, [1, 1, 2 / 3, 2 / 3, 0])
    assert ap == pytest.approx(0.8283333333333334, abs=1e-12)


def test_compute_ap_no_tp_is_zero():
    ap, _, _ = compute_ap(np.array([0.0, 0.0]), np.array([0.0, 0.0]))
    assert ap == 0.0


# ---------------------------------------------------------------------------------------------- smooth, fitness
def test_smooth_box_filter():
    # len 20, f = 0.1 -> nf = round(20 * 0.1 * 2) // 2 + 1 = 3 taps, one padding value each side
    y = np.zeros(20)
    y[10] = 3.0
    ys = smooth(y, 0.1)
    assert ys.shape == (20,)
    np.testing.assert_allclose(ys[9:12], [1, 1, 1])
    assert ys[:9].sum() == 0 and ys[12:].sum() == 0
    # edge padding repeats the end values: a constant stays constant
    np.testing.assert_allclose(smooth(np.full(50, 0.7), 0.1), 0.7)


def test_fitness_weights():
    x = np.array([[0.9, 0.8, 0.5, 0.3, 1.0, 2.0, 3.0], [0, 0, 1.0, 0, 0, 0, 0]])
    np.testing.assert_allclose(fitness(x), [0.1 * 0.5 + 0.9 * 0.3, 0.1])


# ---------------------------------------------------------------------------------------------- IoU helpers
def test_box_iou_and_ioa_and_wh_iou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 5.0], [5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0]])
    # intersections 50, 25, 0; unions 100, 175, 200
    np.testing.assert_allclose(box_iou(a, b).numpy(), [[0.5, 25 / 175, 0.0]], rtol=1e-6)
    # ioa over box2 areas 50, 100, 100
    np.testing.assert_allclose(bbox_ioa(a[0].numpy(), b.numpy()), [1.0, 0.25, 0.0], rtol=1e-6)
    # wh: (10,10) vs (10,5): inter 50, union 100; vs (4, 20): inter 4*10 = 40, union 100 + 80 - 40 = 140
    np.testing.assert_allclose(wh_iou(torch.tensor([[10.0, 10.0]]), torch.tensor([[10.0, 5.0], [4.0, 20.0]])).numpy(),
                               [[0.5, 40 / 140]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- process_batch
def test_process_batch_duplicates_and_class_mismatch():
    labels = torch.tensor([[0, 0, 0, 10, 10.0]])
    dets = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],  # IoU 1, right class -> the match at every threshold
        [0, 0, 10, 8, 0.8, 0],  # IoU 0.8, duplicate -> never correct
        [0, 0, 10, 10, 0.7, 1],  # IoU 1, wrong class -> never correct
    ])
    correct = process_batch(dets, labels, IOUV)
    assert correct.dtype == torch.bool and correct.shape == (3, 10)
    assert correct[0].all() and not correct[1].any() and not correct[2].any()


def test_process_batch_thresholds_columnwise():
    # one label, one detection with IoU 0.72 (box 10 x 7.2 inside 10 x 10): correct for 0.50 .. 0.70 only
    labels = torch.tensor([[2, 0, 0, 10, 10.0]])
    dets = torch.tensor([[0, 0, 10, 7.2, 0.5, 2]])
    correct = process_batch(dets, labels, IOUV)
    assert correct[0].tolist() == [True] * 5 + [False] * 5


def test_process_batch_label_goes_to_first_detection_index():
    # Upstream v7.0 keeps, per label, the first candidate in detection order (NMS order = confidence).
    # d0 has IoU 0.8, d1 has IoU 1.0, same label.  thresholds <= 0.8 (0.50 .. 0.80, 7 of them): d0;
    # thresholds 0.85, 0.90, 0.95: only d1 qualifies.
    labels = torch.tensor([[0, 0, 0, 10, 10.0]])
    dets = torch.tensor([[0, 0, 10, 8, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])
    correct = process_batch(dets, labels, IOUV)
    assert correct[0].tolist() == [True] * 7 + [False] * 3
    assert correct[1].tolist() == [False] * 7 + [True] * 3


def test_process_batch_detection_takes_best_label():
    # one detection overlapping two labels of its class: IoU 0.8 with l0, 1.0 with l1 -> matched (to l1),
    # the second detection (IoU 0.8 with l0 only) then gets l0: both correct at 0.5
    labels = torch.tensor([[0, 0, 0, 10, 10.0], [0, 0, 0, 10, 8.0]])
    dets = torch.tensor([[0, 0, 10, 8, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])
    correct = process_batch(dets, labels, IOUV)
    assert correct[:, 0].tolist() == [True, True]


def test_process_batch_empty():
    correct = process_batch(torch.zeros((0, 6)), torch.tensor([[0, 0, 0, 10, 10.0]]), IOUV)
    assert correct.shape == (0, 10)
    correct = process_batch(torch.tensor([[0, 0, 10, 10, 0.9, 0]]), torch.zeros((0, 5)), IOUV)
    assert not correct.any()


# ---------------------------------------------------------------------------------------------- ap_per_class
def _two_class_set():
    # class 0: 2 labels; detections conf .9 TP, .8 FP, .7 TP at IoU .5; at the 2nd threshold only the .9 one is TP.
    # class 1: 1 label; detection conf .6 TP at IoU .5, FP at the 2nd threshold.
    # Rows are given out of confidence order on purpose (ap_per_class sorts them).
    conf = np.array([0.7, 0.9, 0.6, 0.8])
    tp = np.array([[1, 0], [1, 1], [1, 0], [0, 0]], dtype=bool)
    pred_cls = np.array([0, 0, 1, 0])
    target_cls = np.array([0, 1, 0])
    return tp, conf, pred_cls, target_cls


def test_ap_per_class_two_classes():
    tp, conf, pred_cls, target_cls = _two_class_set()
    tp_, fp_, p, r, f1, ap, classes = ap_per_class(tp, conf, pred_cls, target_cls)
    assert classes.tolist() == [0, 1] and classes.dtype.kind == 'i'
    # AP class 0 @.5: recall [.5, .5, 1], precision [1, .5, 2/3] -> 0.828333 (see test_compute_ap_tp_fp_tp)
    # AP class 0 @2nd: recall [.5, .5, .5], precision [1, .5, 1/3] -> envelope [1, 1, .5, 1/3, 0] on
    #   mrec [0, .5, .5, .5, 1]: k < 50 -> 1; k >= 50 -> (1/3)(100 - k)/50 (line from 1/3 at .5 to 0 at 1).
    #   sum = 50 + (1/150) * (0 + 1 + ... + 50) = 50 + 1275/150 = 58.5; minus (1 + 0)/2 -> 0.58
    # AP class 1 @.5: recall [1], precision [1] -> 0.995; @2nd: recall 0, precision 0 -> 0
    np.testing.assert_allclose(ap, [[0.8283333333333334, 0.58], [0.995, 0.0]], atol=1e-12)
    # P/R curves vs confidence threshold px: for px <= 0.6 class 0 has P 2/3, R 1 (F1 0.8) and class 1 P 1, R 1
    # (F1 1); the mean F1 0.9 is the maximum, and that whole plateau (smoothed) gives the same values.
    np.testing.assert_allclose(p, [2 / 3, 1.0], atol=1e-9)
    np.testing.assert_allclose(r, [1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(f1, [0.8, 1.0], atol=1e-9)
    # tp = round(r * nt) = [2, 1]; fp = round(tp / p - tp) = [2 / (2/3) - 2, 0] = [1, 0]
    assert tp_.tolist() == [2, 1] and fp_.tolist() == [1, 0]


def test_ap_per_class_class_without_detections_and_no_labels():
    # class 5 has a label but no detection -> zeros; class 7 has detections but no label -> not reported
    tp = np.array([[1], [1]], dtype=bool)
    conf = np.array([0.9, 0.8])
    tp_, fp_, p, r, f1, ap, classes = ap_per_class(tp, conf, np.array([0, 7]), np.array([0, 5]))
    assert classes.tolist() == [0, 5]
    assert ap[1, 0] == 0 and p[1] == 0 and r[1] == 0
    assert ap[0, 0] == pytest.approx(0.995)
    # no ground truth at all: empty results, no warnings turned into errors
    out = ap_per_class(np.zeros((2, 10), bool), conf, np.array([0, 1]), np.array([]))
    assert out[5].shape == (0, 10) and out[6].shape == (0,)


def test_ap_per_class_plots(tmp_path):
    tp, conf, pred_cls, target_cls = _two_class_set()
    names = {0: 'circle', 1: 'rectangle', 2: 'triangle'}  # class 2 has no data: left out of the legends
    *_, curves = ap_per_class(tp, conf, pred_cls, target_cls, names=names, return_curves=True)
    plot_pr_curves(curves, tmp_path, prefix='x_')
    for f in ('PR', 'F1', 'P', 'R'):
        png = tmp_path / f'x_{f}_curve.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ---------------------------------------------------------------------------------------------- ConfusionMatrix
def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([
        [0, 0, 0, 10, 10.0],  # A: detected as class 0 -> matrix[0, 0]
        [1, 20, 0, 30, 10.0],  # B: detected as class 0 -> matrix[0, 1]
        [1, 40, 0, 50, 10.0],  # C: only a low-confidence detection -> missed, matrix[2, 1]
    ])
    dets = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],
        [20, 0, 30, 10, 0.8, 0],
        [60, 60, 70, 70, 0.7, 1],  # matches nothing -> background FP, matrix[1, 2]
        [40, 0, 50, 10, 0.1, 1],  # conf 0.1 <= 0.25: ignored
    ])
    cm.process_batch(dets, labels)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 1]

    cm.process_batch(None, torch.tensor([0, 1]))  # image without detections: both labels missed
    np.testing.assert_array_equal(cm.matrix[2], [1, 2, 0])


def test_confusion_matrix_no_match_counts_no_fp():
    # upstream quirk: when nothing in the image matches, unmatched detections are not counted as FP
    cm = ConfusionMatrix(nc=1)
    cm.process_batch(torch.tensor([[50, 50, 60, 60, 0.9, 0]]), torch.tensor([[0, 0, 0, 10, 10.0]]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0], [1, 0]])


def test_confusion_matrix_plot_and_print(tmp_path, capsys):
    cm = ConfusionMatrix(nc=2)
    cm.matrix[:] = [[3, 1, 0], [0, 2, 1], [1, 0, 0]]
    f = cm.plot(normalize=True, save_dir=tmp_path, names=['a', 'b'])
    assert f == tmp_path / 'confusion_matrix.png' and f.stat().st_size > 10_000
    cm.print()
    assert capsys.readouterr().out.splitlines()[0] == '3.0 1.0 0.0'
