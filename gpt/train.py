"""GPT pretraining for a fixed wall-clock budget, scored by val_bpb. The one file the inner loop edits.

    python -m gpt.train --budget-s 60 --result-json out.json
    python path/to/copy/train.py --budget-s 60           # a copy, with the repository root on PYTHONPATH

The budget clock, the evaluator and the report are locked in gpt/runtime.py and gpt/evaluate.py; this file calls
`runtime.launch`, which parses arguments, checks the block below, loads the data, calls `train`, evaluates, reports.

Model: GPT with RoPE, parameter-free RMSNorm pre-norm, QK-norm, ReLU^2 MLP, untied head, logit soft-cap, per-layer
residual and input-skip scalars. Optimizer: Muon (Newton-Schulz orthogonalised momentum) for the block matrices and
AdamW for embedding, head and scalars; OPTIMIZER = "adamw" puts the matrices on AdamW too (MATRIX_LR is then an AdamW
learning rate: ~0.001-0.004 rather than Muon's ~0.02-0.05).
model_dim = DEPTH * ASPECT_RATIO rounded up to a multiple of HEAD_DIM. TOTAL_BATCH_TOKENS per optimizer step, reached
by gradient accumulation over micro-batches of DEVICE_BATCH_SIZE x SEQ_LEN tokens (a whole number of them, else exit 2).
The LR schedule follows the fraction of the budget spent: linear warm-up, flat, linear warm-down to FINAL_LR_FRAC.
LOGIT_SOFTCAP = 0 disables the soft-cap.
"""

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt import runtime

# ---- hyperparameters: the inner loop edits this block ----
DEPTH = 4  # int [1, 24]; transformer blocks: deeper learns more per step but runs slower
ASPECT_RATIO = 64  # int [16, 128]; model width per block of depth (width = DEPTH * ASPECT_RATIO)
HEAD_DIM = 64  # choice [32, 64, 128]; width of one attention head
SEQ_LEN = 256  # choice [64, 128, 256, 512, 1024, 2048]; context length in tokens
TOTAL_BATCH_TOKENS = 8192  # int [1024, 1048576] log multiple_of DEVICE_BATCH_SIZE*SEQ_LEN; tokens per optimizer step
DEVICE_BATCH_SIZE = 16  # int [1, 256] log; sequences per micro-batch (accumulated up to the total)
OPTIMIZER = "muon"  # choice ["muon", "adamw"]; optimizer of the block matrices
MATRIX_LR = 0.04  # float [0.0005, 0.2] log; learning rate of the block matrices
EMBEDDING_LR = 0.6  # float [0.01, 3.0] log; learning rate of the token embedding
UNEMBEDDING_LR = 0.004  # float [0.0001, 1.0] log; learning rate of the output head
SCALAR_LR = 0.5  # float [0.01, 2.0] log; learning rate of the per-block residual scalars
WEIGHT_DECAY = 0.0  # float [0.0, 0.5]; weight decay of the block matrices
MUON_MOMENTUM = 0.95  # float [0.8, 0.99]; momentum of Muon
ADAM_BETA1 = 0.8  # float [0.5, 0.99]; AdamW's gradient averaging (first moment)
ADAM_BETA2 = 0.95  # float [0.8, 0.999]; AdamW's squared-gradient averaging (second moment)
WARMUP_FRAC = 0.0  # float [0.0, 0.3]; share of the budget warming the learning rate up
WARMDOWN_FRAC = 0.5  # float [0.0, 1.0]; share of the budget, at the end, decaying the learning rate
FINAL_LR_FRAC = 0.0  # float [0.0, 1.0]; final learning rate as a share of the peak
LOGIT_SOFTCAP = 15.0  # float [0.0, 50.0]; tanh cap on the output logits (0: off)
# ---- end of hyperparameters ----


# ---------------------------------------------------------------------------------------------------------------------
# Model


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.n_head, self.head_dim = dim // head_dim, head_dim
        # q, k and v as one (3, dim, dim) tensor: one matmul forward, and Muon orthogonalises each separately
        self.qkv = nn.Parameter(torch.empty(3, dim, dim))
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = F.linear(x, self.qkv.flatten(0, 1)).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = norm(rotary(q, cos, sin)), norm(rotary(k, cos, sin))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim, bias=False)
        self.down = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class Block(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    resid_lambdas: nn.Parameter
    x0_lambdas: nn.Parameter
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, vocab_size: int, depth: int, dim: int, head_dim: int, seq_len: int, softcap: float) -> None:
        super().__init__()
        self.softcap = softcap
        self.embed = nn.Embedding(vocab_size, dim)
        self.block_list = [Block(dim, head_dim) for _ in range(depth)]  # typed view of the registered modules
        self.blocks = nn.ModuleList(self.block_list)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        # x <- resid * x + x0 * (normed embedding) before each block: cheap, lets depth use the raw input
        self.resid_lambdas = nn.Parameter(torch.ones(depth))
        self.x0_lambdas = nn.Parameter(torch.full((depth,), 0.1))
        freqs = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)[None, :, None, :]  # (1, T, 1, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        dim = self.embed.embedding_dim
        bound = 3**0.5 * dim**-0.5  # uniform with std 1/sqrt(dim)
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.head.weight, std=0.001)
        for block in self.block_list:
            nn.init.uniform_(block.attn.qkv, -bound, bound)
            nn.init.uniform_(block.mlp.up.weight, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # each block starts as the identity
            nn.init.zeros_(block.mlp.down.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.embed(idx))
        for i, block in enumerate(self.block_list):
            x = block(self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0, cos, sin)
        x = norm(x)
        if targets is None and not torch.is_grad_enabled():  # evaluation
            return self.capped_logits_by_rows(x)
        logits = self.head(x).float()
        if self.softcap > 0:
            logits = self.cap(logits)
        if targets is None:
            return logits
        if 0 < self.softcap <= 50:  # capped logits lie in [-50, 50]: their exp cannot overflow, no max pass needed
            log_sum_exp = logits.exp().sum(-1).log()
            return (log_sum_exp - logits.gather(-1, targets[..., None]).squeeze(-1)).mean()
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        """softcap * tanh(logits / softcap), written with one exp: on a CPU the compiled exp is cheaper than tanh."""
        return self.softcap - 2 * self.softcap * torch.reciprocal(torch.exp(logits * (2 / self.softcap)) + 1)

    @torch.no_grad()
    def capped_logits_by_rows(self, x: torch.Tensor, rows: int = 1024) -> torch.Tensor:
        """The same head and soft-cap, bit for bit, in place and `rows` positions at a time: each chunk of logits
        is capped while it is still in the CPU's cache (on 8,192 positions 0.08 s instead of 0.12)."""
        flat = x.flatten(0, -2)
        logits = torch.empty(flat.size(0), self.head.out_features, device=x.device)
        for start in range(0, flat.size(0), rows):
            chunk = self.head(flat[start : start + rows]).float()
            if self.softcap > 0:  # self.cap, in place
                s = self.softcap
                chunk = chunk.mul_(2 / s).exp_().add_(1).reciprocal_().mul_(-2 * s).add_(s)
            logits[start : start + rows] = chunk
        return logits.view(*x.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------------------------------
# Optimizer


@torch.no_grad()
def orthogonalize(g: torch.Tensor, dtype: torch.dtype, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix of each g[i], g of shape (n, rows, cols)."""
    a, b, c = 3.4445, -4.7750, 2.0315  # quintic coefficients tuned for fast convergence (Keller Jordan's Muon)
    x = g.to(dtype)  # the run's compute dtype: bf16 where its matmuls are faster (GPUs, CPUs with AMX), else fp32
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = x @ x.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b * A + c * A @ A, the scaling inside the matmul
        x = torch.baddbmm(x, B, x, beta=a)  # a * x + B @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised per matrix; same-shaped matrices go through Newton-Schulz as one batch."""

    def __init__(
        self, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float, dtype: torch.dtype
    ) -> None:
        self.dtype = dtype
        by_shape: dict[tuple[int, int], list[nn.Parameter]] = {}
        for p in params:
            by_shape.setdefault((p.shape[-2], p.shape[-1]), []).append(p)
        groups = [{"params": ps} for ps in by_shape.values()]
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            ps = group["params"]
            rows, cols = ps[0].shape[-2:]
            g = torch.cat([p.grad.reshape(-1, rows, cols) for p in ps])
            state = self.state[ps[0]]
            buf = state.setdefault("momentum", torch.zeros_like(g))
            buf.lerp_(g, 1 - group["momentum"])
            update = orthogonalize(g.lerp_(buf, group["momentum"]), self.dtype)
            lr = group["lr"] * max(1.0, rows / cols) ** 0.5
            offset = 0
            for p in ps:
                n = p.numel() // (rows * cols)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update[offset : offset + n].view_as(p), alpha=-lr)
                offset += n


def make_optimizers(model: GPT, dtype: torch.dtype = torch.float32) -> list[torch.optim.Optimizer]:
    dim = model.embed.embedding_dim
    scale = (dim / 768) ** -0.5  # AdamW rates of embedding and head were tuned at width 768
    matrices = [p for p in model.blocks.parameters() if p.ndim >= 2]
    betas = (ADAM_BETA1, ADAM_BETA2)
    groups = [
        {"params": [model.embed.weight], "lr": EMBEDDING_LR * scale, "weight_decay": 0.0},
        {"params": [model.head.weight], "lr": UNEMBEDDING_LR * scale, "weight_decay": 0.0},
        # the scalars' first gradient is 0 up to rounding (zero-initialised blocks pass x0's direction, which the final
        # norm ignores): an eps of 1e-10 would turn that rounding into a full step in a random direction
        {"params": [model.resid_lambdas, model.x0_lambdas], "lr": SCALAR_LR, "weight_decay": 0.0, "eps": 1e-8},
    ]
    if OPTIMIZER == "adamw":
        groups.append({"params": matrices, "lr": MATRIX_LR, "weight_decay": WEIGHT_DECAY})
    fused = model.embed.weight.device.type in ("cpu", "cuda")  # one kernel for all tensors where torch has one
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, betas=betas, eps=1e-10, fused=fused)]
    if OPTIMIZER == "muon":
        optimizers.append(Muon(matrices, MATRIX_LR, MUON_MOMENTUM, WEIGHT_DECAY, dtype))
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_FRAC:
        return (progress + 1e-3) / (WARMUP_FRAC + 1e-3)  # small but non-zero on the first steps
    if progress <= 1.0 - WARMDOWN_FRAC:
        return 1.0
    left = (1.0 - progress) / WARMDOWN_FRAC
    return left + (1.0 - left) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------------------------------------------------
# Training

COMPILE = True  # inductor fuses the element-wise work (norms, rotary, ReLU^2, soft-cap): +30% on CPU, more on GPU


def train_step(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizers: list[torch.optim.Optimizer],
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    accum_steps: int,
    autocast: Callable[[], AbstractContextManager],
) -> float:
    """One optimizer step over accum_steps micro-batches; returns the mean loss (its .item() syncs the device)."""
    losses = []
    for _ in range(accum_steps):
        x, y = next(batches)
        with autocast():
            loss = model(x, y)
        (loss / accum_steps).backward()
        losses.append(loss.detach())
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return torch.stack(losses).mean().item()


def train(run: runtime.Run) -> runtime.Trained:
    model_dim = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
    tokens_per_micro = DEVICE_BATCH_SIZE * SEQ_LEN
    if TOTAL_BATCH_TOKENS % tokens_per_micro:
        raise runtime.ConfigError(
            f"TOTAL_BATCH_TOKENS={TOTAL_BATCH_TOKENS} is not a multiple of DEVICE_BATCH_SIZE*SEQ_LEN={tokens_per_micro}"
        )
    accum_steps = TOTAL_BATCH_TOKENS // tokens_per_micro

    model = GPT(run.data.vocab_size, DEPTH, model_dim, HEAD_DIM, SEQ_LEN, LOGIT_SOFTCAP).to(run.device)
    model.init_weights()
    optimizers = make_optimizers(model, torch.bfloat16 if run.device == "cuda" else run.dtype)
    # compiling happens in the first steps, which the clock does not count; evaluation uses the eager model
    step_model = torch.compile(model) if COMPILE and run.device != "mps" else model

    num_params = sum(p.numel() for p in model.parameters())
    non_embedding = num_params - model.embed.weight.numel()
    flops_per_token = 6 * non_embedding + 6 * DEPTH * model_dim * SEQ_LEN  # matmuls + causal attention, fwd+bwd
    print(
        f"model_dim={model_dim} heads={model_dim // HEAD_DIM} params={num_params / 1e6:.2f}M "
        f"accum_steps={accum_steps} device={run.device} dtype={run.dtype} budget={run.clock.budget_s}s",
        flush=True,
    )

    batches = run.data.batches(DEVICE_BATCH_SIZE, SEQ_LEN, run.device, run.args.seed)
    clock = run.clock
    while not clock.done():
        lrm = lr_multiplier(clock.progress)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        with clock.step(TOTAL_BATCH_TOKENS):
            train_loss = train_step(step_model, optimizers, batches, accum_steps, run.autocast)
        runtime.check_loss(train_loss)
        if clock.steps % 10 == 0 or clock.steps <= 3:
            print(
                f"step {clock.steps:5d} | loss {train_loss:.4f} | lrm {lrm:.2f} | "
                f"{clock.training_seconds:6.1f}/{clock.budget_s:g}s",
                flush=True,
            )

    return runtime.Trained(model, flops_per_token, num_params, DEPTH, SEQ_LEN, DEVICE_BATCH_SIZE)


if __name__ == "__main__":
    sys.exit(runtime.launch(__file__, train))
