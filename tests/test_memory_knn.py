"""Memory bank update and the weighted kNN on hand-made examples."""

import math

import pytest
import torch
import torch.nn.functional as F

from instdisc.knn import knn_accuracy, knn_predict, topk_cosine, weighted_vote
from instdisc.memory import MemoryBank


def test_bank_momentum_update_renormalises_only_batch_rows():
    bank = MemoryBank(4, 2, momentum=0.5)
    bank.features.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]))
    bank.update(torch.tensor([0, 3]), torch.tensor([[0.0, 1], [1, 0]]))
    s = 1 / math.sqrt(2)
    assert torch.allclose(bank.features, torch.tensor([[s, s], [0, 1], [1, 0], [s, s]]))
    assert "features" in bank.state_dict()


def test_bank_momentum_zero_copies_features_and_random_init_is_unit():
    bank = MemoryBank(10, 3, momentum=0.0)
    bank.reset_random(torch.Generator().manual_seed(0))
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(10))
    f = F.normalize(torch.randn(2, 3), dim=1)
    bank.update(torch.tensor([1, 2]), f)
    assert torch.allclose(bank.features[1:3], f)
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(3, 2, momentum=1.0)


def test_weighted_vote_by_hand():
    # Neighbours: class 0 at s=0.9, class 1 at s=0.8 and 0.7. tau=0.1:
    # class 0 weight e^9 = 8103; class 1 weight e^8 + e^7 = 2981 + 1097 = 4078 -> class 0.
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    labels = torch.tensor([[0, 1, 1]])
    votes = weighted_vote(scores, labels, 2, 3, 0.1)
    assert votes[0, 0].item() == pytest.approx(math.exp(9))
    assert votes[0, 1].item() == pytest.approx(math.exp(8) + math.exp(7))
    # With a large tau the weights flatten and the majority (class 1) wins.
    assert weighted_vote(scores, labels, 2, 3, 10.0).argmax(1).item() == 1


def test_knn_predict_hand_made_bank():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1])
    q = F.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    preds = knn_predict(q, bank, labels, ks=(1, 3, 5), temperature=0.1)
    assert preds[1].tolist() == [0, 1]
    assert preds[3].tolist() == [0, 1]
    acc = knn_accuracy(q, torch.tensor([0, 1]), bank, labels, ks=(1, 5), temperature=0.1)
    assert acc == {1: 1.0, 5: 1.0}


def test_chunked_topk_equals_full_and_excludes_self():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(1000, 16, generator=g), dim=1)
    q = F.normalize(torch.randn(37, 16, generator=g), dim=1)
    s_full, i_full = (q @ bank.t()).topk(10, dim=1)
    s, i = topk_cosine(q, bank, 10, query_chunk=8, bank_chunk=64)
    assert torch.allclose(s, s_full, atol=1e-6) and torch.equal(i, i_full)
    # leave-one-out: querying the bank with itself never returns the row itself
    s, i = topk_cosine(bank[:20], bank, 3, bank_chunk=7, exclude=torch.arange(20))
    assert not (i == torch.arange(20).view(-1, 1)).any()


def test_unlabelled_rows_never_vote():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([-1, 1, 0])
    pred = knn_predict(bank[:1], bank, labels, ks=(1,), temperature=0.1, num_classes=2)
    assert pred[1].item() == 1
