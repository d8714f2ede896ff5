"""A PyTorch training loop with the usual mistakes, and their stable neighbours."""

import torch
import torch.nn.functional as F
from torch import nn

model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
softmax_model = nn.Sequential(nn.Linear(784, 10), nn.Softmax(dim=1))
criterion = nn.CrossEntropyLoss()
nll = nn.NLLLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


def train(loader):
    for x, y in loader:
        optimizer.zero_grad()
        logits = model(x)
        loss = criterion(logits, y)
        probs = F.softmax(logits, dim=1)
        correct = (probs.argmax(1) == y).sum()
        bad = F.cross_entropy(F.softmax(logits, dim=1), y)  # expect: XA102
        worse = criterion(softmax_model(x), y)  # expect: XA102
        log_p = torch.log(F.softmax(logits, dim=1))  # expect: XA101
        also = logits.softmax(-1).log()  # expect: XA101
        nll_eps = nll(torch.log(probs + 1e-8), y)  # expect: XA105
        clamped = -(F.one_hot(y, 10) * torch.log(probs.clamp(min=1e-7))).sum(1)  # expect: XA103
        lse = torch.log(torch.exp(logits).sum(dim=1))  # expect: XA106
        g = logits[:, 0]
        log_gate = torch.log(torch.sigmoid(g)) + torch.log(1 - torch.sigmoid(g))  # expect: XA107
        good = F.nll_loss(F.log_softmax(logits, dim=1), y) + torch.logsumexp(logits, dim=1).mean()
        good = good + F.logsigmoid(g).mean()
        loss.backward()
        optimizer.step()
    return correct, bad, worse, log_p, also, nll_eps, clamped, lse, log_gate, good
