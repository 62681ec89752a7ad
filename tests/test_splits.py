import numpy as np
import pytest
import torch

from data_pipeline import splits


def _seq(n: int, base: int = 1) -> np.ndarray:
    # distinct item per position, so an item value identifies its position
    return np.arange(base, base + n, dtype=np.int32)


@pytest.mark.parametrize("n", [4, 5, 10, 201, 202, 203, 500])
@pytest.mark.parametrize("max_len", [1, 3, 200])
def test_train_window_is_inside_the_training_part(n, max_len):
    rng = np.random.default_rng(n * 1000 + max_len)
    seq = _seq(n)
    train_part = set(seq[:-2].tolist())
    starts = set()
    for _ in range(50):
        inputs, targets = splits.train_window(seq, max_len, rng)
        assert len(inputs) == len(targets) == min(n - 2, max_len + 1) - 1
        assert set(inputs.tolist()) | set(targets.tolist()) <= train_part
        assert seq[-1] not in inputs and seq[-2] not in inputs
        assert seq[-1] not in targets and seq[-2] not in targets
        np.testing.assert_array_equal(targets[:-1], inputs[1:])  # targets are the next items
        assert targets[-1] == inputs[-1] + 1
        starts.add(int(inputs[0]))
    if n - 2 > max_len + 1:
        assert len(starts) > 1  # windows are random, not always the latest


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_short_sequences_have_no_training_example(n):
    with pytest.raises(ValueError, match="no training example"):
        splits.train_window(_seq(n), 200, np.random.default_rng(0))


def test_vectorised_windows_match_definition():
    lengths = np.array([0, 1, 2, 3, 4, 5, 300, 1000])
    rng = np.random.default_rng(0)
    index, start, size = splits.train_window_starts(lengths, 200, rng)
    np.testing.assert_array_equal(index, [4, 5, 6, 7])
    np.testing.assert_array_equal(size, [2, 3, 201, 201])
    assert np.all(start >= 0) and np.all(start + size <= lengths[index] - 2)


def test_eval_examples():
    seq = _seq(10)
    w, t, h = splits.eval_example(seq, "valid", 4)
    assert t == 9 and h.tolist() == list(range(1, 9)) and w.tolist() == [5, 6, 7, 8]
    w, t, h = splits.eval_example(seq, "test", 4)
    assert t == 10 and h.tolist() == list(range(1, 10)) and w.tolist() == [6, 7, 8, 9]
    w, t, h = splits.eval_example(seq, "predict", 4)
    assert t == 0 and h.tolist() == list(range(1, 11)) and w.tolist() == [7, 8, 9, 10]
    assert splits.eval_example(_seq(3), "valid", 200)[1] == 2
    assert splits.eval_example(_seq(2), "test", 200)[1] == 2
    with pytest.raises(ValueError, match="no valid example"):
        splits.eval_example(_seq(2), "valid", 200)
    with pytest.raises(ValueError, match="no test example"):
        splits.eval_example(_seq(1), "test", 200)
    with pytest.raises(ValueError, match="split must be one of"):
        splits.eval_example(seq, "train", 4)
    np.testing.assert_array_equal(splits.eval_eligible(np.arange(5), "valid"), [0, 0, 0, 1, 1])


def test_eval_targets_never_in_training_windows_of_many_users():
    rng = np.random.default_rng(1)
    for u in range(200):
        seq = _seq(int(rng.integers(4, 60)), base=1 + 1000 * u)
        _, valid_target, _ = splits.eval_example(seq, "valid", 20)
        _, test_target, _ = splits.eval_example(seq, "test", 20)
        for _ in range(5):
            inputs, targets = splits.train_window(seq, 20, rng)
            seen = set(inputs.tolist()) | set(targets.tolist())
            assert valid_target not in seen and test_target not in seen


def test_collate_train_left_pads_and_masks_targets():
    batch = splits.collate_train([np.array([5, 6, 7, 8], np.int32), np.array([3, 4], np.int32)])
    assert batch["items"].dtype == batch["targets"].dtype == torch.int64
    assert batch["items"].tolist() == [[5, 6, 7], [0, 0, 3]]
    assert batch["targets"].tolist() == [[6, 7, 8], [0, 0, 4]]


def test_collate_eval_shapes():
    b = splits.collate_eval([np.array([1, 2]), np.array([3])], [4, 5], [np.array([9, 1, 2]), np.array([3])],
                            [7, -1], [True, False])
    assert b["items"].tolist() == [[1, 2], [0, 3]]
    assert b["seen"].tolist() == [[9, 1, 2], [0, 0, 3]]
    assert b["target"].tolist() == [4, 5] and b["user"].tolist() == [7, -1] and b["valid"].tolist() == [True, False]
    assert b["valid"].dtype == torch.bool and all(b[k].dtype == torch.int64 for k in ("items", "seen", "target", "user"))


def test_left_pad_width_keeps_last_items():
    assert splits.left_pad([np.array([1, 2, 3])], width=2).tolist() == [[2, 3]]
    assert splits.left_pad([np.zeros(0, np.int32)]).tolist() == [[0]]
