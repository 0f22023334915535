"""The smallest SGS loop, next to the plain end-to-end loop it replaces.

Run: python examples/minimal.py
"""

import torch
from torch import nn

from sgs_tad import SequentializedGradientSampler

torch.manual_seed(0)
# A toy encoder (snippet [3, 4, 16, 16] -> feature [32]) and a toy per-snippet detector.
encoder = nn.Sequential(
    nn.Conv3d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
    nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 32),
)  # fmt: skip
detector = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))
params = [*encoder.parameters(), *detector.parameters()]
optimizer = torch.optim.AdamW(params, lr=1e-3)
snippets = torch.randn(2, 24, 3, 4, 16, 16)  # [B videos, N snippets, *snippet shape]
targets = torch.rand(2, 24)  # e.g. per-snippet actionness


def criterion(feats):
    return nn.functional.binary_cross_entropy_with_logits(detector(feats).squeeze(-1), targets)


# Plain end to end: every snippet's activations are kept for the backward pass.
b, n = snippets.shape[:2]
loss = criterion(encoder(snippets.flatten(0, 1)).view(b, n, -1))
loss.backward()
optimizer.step()
optimizer.zero_grad()
print(f"end to end   loss {loss.item():.4f}")

# SGS: K snippets at a time, and only 30 % of them back-propagated into the encoder.
sgs = SequentializedGradientSampler(encoder, micro_batch_size=4, ratio=0.3)
for step in range(3):
    feats = sgs.encode(snippets)  # phase 1: [B, N, C] leaf, no encoder graph kept
    loss = criterion(feats)
    loss.backward()  # phase 2: detector grads and feats.grad
    sgs.backward(snippets, feats)  # phase 3: sampled re-forward + backward into the encoder
    optimizer.step()
    optimizer.zero_grad()
    print(f"SGS step {step}   loss {loss.item():.4f}  encoder calls {sgs.stats.encode_calls}"
          f" + {sgs.stats.recompute_calls}")  # fmt: skip
