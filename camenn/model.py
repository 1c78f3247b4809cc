"""CameNN: cross-modal alignment with a mixture-of-experts network (arXiv 2009.09926).

One readable file: the config, the input containers, the layers and the model (~780 lines,
as nanoGPT keeps its model in one file: a reader checks a shape or a mask against the layer
that uses it without leaving the page; the data and training code live elsewhere).

    each item  = [CLS] text-tokens [SEP] image-patches     (+ segment, + position, + slot)
    E_input    = [user tokens | behaviour items 1..N | target item]
    X          = bottom(E_input)
    X^k        = sum_j gate^k(mean E_input)_j * expert_j(X)
    y^k        = head^k(tower^k(X^k)[target CLS])          k in config.tasks

Every head (CVR, ITA and TIA) reads the target item's [CLS] output. For CVR this is the
BST-style choice with a twist: the target's [CLS] attends to the user tokens and every
behaviour item in the bottom, the expert and the tower, so it is the natural "target in the
context of this user" summary, and it keeps one code path for all tasks.

Padding invariance is a hard requirement (the nightly job pads behaviour sequences to the
batch maximum): positions never depend on how much padding there is (text token i always
gets position 1 + i, the [SEP] and the patches sit at fixed positions after max_text_tokens),
the target always has slot 0, and padded tokens are masked as attention keys, skipped by the
LSTM (it reads them only after the real tokens) and excluded from the gate's mean pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

TASKS = ("cvr", "ita", "tia")
BLOCK_TYPES = ("transformer", "mlp", "lstm")
BEHAVIOUR_TOKENS = ("full", "pooled")

# segment ids
SEG_TEXT, SEG_IMAGE, SEG_USER = 0, 1, 2

# forward-output keys that are not task logits
NON_TASK_OUTPUTS = ("gates", "gate_aux_loss")

# noisy top-k gating: std of the initial gate weights, and a floor on the noise std (the paper's
# reference code), so the load estimate's division never meets 0
GATE_INIT_STD = 0.02
GATE_NOISE_EPS = 1e-2


# -----------------------------------------------------------------------------
# configuration


@dataclass
class CameNNConfig:
    text_dim: int = 384  # all-MiniLM-L6-v2 hidden size
    image_dim: int = 1280  # EfficientNet-Lite0 feature channels
    n_patches: int = 9  # 3x3 grid
    max_text_tokens: int = 50
    d_model: int = 64
    n_heads: int = 8
    ffn_mult: int = 4
    n_bottom_layers: int = 1
    n_experts: int = 4
    expert_layers: int = 1
    tower_layers: int = 1
    top_k: int | None = None  # None = dense softmax gate over all experts; k < n_experts = noisy top-k
    # weight of the gates' load-balancing loss (out["gate_aux_loss"]) in training; used only with
    # noisy top-k gating (top_k < n_experts), dense gating has no such loss
    gate_balance_weight: float = 1e-2
    bottom_type: str = "transformer"
    expert_type: str = "transformer"
    tasks: tuple[str, ...] = TASKS
    max_behaviour: int = 5
    # vocabulary size per categorical feature, ids in [0, size), 0 = unknown / padding;
    # the order of the keys is the column order of ItemTokens.feats / CameNNBatch.user_feats
    item_feature_sizes: dict[str, int] = field(default_factory=dict)
    user_feature_sizes: dict[str, int] = field(default_factory=dict)
    dropout: float = 0.1  # embeddings, residual branches
    # Dropout on the attention weights is off by default: with it, PyTorch's CPU attention leaves
    # the fused flash kernel for the math path, and a training step got 5x slower (14.5 s vs 2.8 s
    # for a 128-row full batch on 2 cores, benchmarks/bench_training_step.py)
    attn_dropout: float = 0.0
    lstm_bidirectional: bool = True
    # How a behaviour item enters E_input: "full" = its whole [CLS] text [SEP] patches run (the
    # paper); "pooled" = three tokens, its [CLS] (category, price), the mean of its text tokens
    # and the mean of its patches. The target item is always a full run.
    behaviour_tokens: str = "full"
    # ITA/TIA logits also read the cosine of the target's mean projected text and mean projected
    # image, with a learnt scale per task: the pair score the contrastive loss trains
    # (training.contrastive_weight). On real photos that pooled score generalised to new photos
    # better than the fused towers (docs/results/grocery-store.md); off = the paper's heads alone
    alignment_skip: bool = False

    def __post_init__(self):
        # JSON gives lists back; tuples keep the config hashable-ish and == after a round trip
        self.tasks = tuple(self.tasks)
        self.item_feature_sizes = {str(k): int(v) for k, v in dict(self.item_feature_sizes).items()}
        self.user_feature_sizes = {str(k): int(v) for k, v in dict(self.user_feature_sizes).items()}
        problems = []
        for name in ("text_dim", "image_dim", "n_patches", "max_text_tokens", "d_model", "n_heads",
                     "ffn_mult", "n_experts", "expert_layers", "tower_layers"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("n_bottom_layers", "max_behaviour"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.n_heads >= 1 and self.d_model % self.n_heads != 0:
            problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.top_k is not None and not 1 <= self.top_k <= self.n_experts:
            problems.append(f"top_k must be None or in [1, n_experts={self.n_experts}] (got {self.top_k})")
        for name in ("bottom_type", "expert_type"):
            if getattr(self, name) not in BLOCK_TYPES:
                problems.append(f"{name} must be one of {BLOCK_TYPES} (got {getattr(self, name)!r})")
        if not self.tasks:
            problems.append("tasks must name at least one task")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            problems.append(f"unknown task(s) {unknown}; tasks must be a subset of {TASKS}")
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"tasks must not repeat (got {self.tasks})")
        for where in ("item_feature_sizes", "user_feature_sizes"):
            for k, v in getattr(self, where).items():
                if v < 1:
                    problems.append(f"{where}[{k!r}] must be >= 1 (got {v})")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if not self.gate_balance_weight >= 0.0:  # also rejects NaN
            problems.append(f"gate_balance_weight must be >= 0 (got {self.gate_balance_weight})")
        if self.behaviour_tokens not in BEHAVIOUR_TOKENS:
            problems.append(f"behaviour_tokens must be one of {BEHAVIOUR_TOKENS} (got {self.behaviour_tokens!r})")
        if problems:
            raise ValueError("invalid CameNNConfig: " + "; ".join(problems))

    @property
    def sparse_gating(self) -> bool:
        """Noisy top-k gating; top_k = n_experts keeps every expert, which is dense gating."""
        return self.top_k is not None and self.top_k < self.n_experts

    @property
    def item_tokens_max(self) -> int:
        return self.max_text_tokens + 2 + self.n_patches  # [CLS] text [SEP] patches

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CameNNConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CameNNConfig key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


# -----------------------------------------------------------------------------
# inputs


@dataclass
class ItemTokens:
    """Cached encoder outputs of a batch of items. Behaviour items carry an extra N dim after B.

    ``projected`` items carry the model's own input projections instead (``CameNN.project_items``:
    text and image already mapped to d_model), which is all an item contributes besides its
    feature ids; the nightly CVR path moves these compact tokens instead of the encoder outputs.
    """

    text: torch.Tensor  # (B, L, Dt) float, or (B, L, D) when projected
    text_mask: torch.Tensor  # (B, L) bool, True = real token
    image: torch.Tensor  # (B, P, Di) float, or (B, P, D) when projected
    feats: torch.Tensor  # (B, Fi) long, one column per config.item_feature_sizes key
    projected: bool = False

    def to(self, device, non_blocking: bool = False) -> ItemTokens:
        return ItemTokens(*(t.to(device, non_blocking=non_blocking) for t in
                            (self.text, self.text_mask, self.image, self.feats)), projected=self.projected)

    def __len__(self) -> int:
        return self.text.shape[0]

    def select(self, idx: torch.Tensor) -> ItemTokens:
        """Rows ``idx`` (a LongTensor) of every field."""
        return ItemTokens(self.text[idx], self.text_mask[idx], self.image[idx], self.feats[idx], self.projected)

    @staticmethod
    def cat(parts: list[ItemTokens]) -> ItemTokens:
        """Concatenate along B; text lengths must already agree."""
        return ItemTokens(*(torch.cat([getattr(p, f) for p in parts], dim=0)
                            for f in ("text", "text_mask", "image", "feats")), projected=parts[0].projected)


@dataclass
class CameNNBatch:
    """The model's input. behaviour=None and user_feats=None is item-only mode (alignment)."""

    target: ItemTokens
    behaviour: ItemTokens | None = None  # fields (B, N, ...); slots filled from index 0, padding at the end
    behaviour_mask: torch.Tensor | None = None  # (B, N) bool, True = real slot; None = all real
    user_feats: torch.Tensor | None = None  # (B, Fu) long

    def to(self, device, non_blocking: bool = False) -> CameNNBatch:
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return CameNNBatch(
            target=self.target.to(device, non_blocking),
            behaviour=None if self.behaviour is None else self.behaviour.to(device, non_blocking),
            behaviour_mask=mv(self.behaviour_mask),
            user_feats=mv(self.user_feats),
        )

    @property
    def item_only(self) -> bool:
        return self.behaviour is None and self.user_feats is None


# -----------------------------------------------------------------------------
# layers: every block maps (x (B, T, D), pad (B, T) bool True = padding) -> (B, T, D)


class SelfAttention(nn.Module):
    def __init__(self, cfg: CameNNConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.attn_dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q = q.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, Dh)
        # only keys are masked: padded queries still see real keys, so no row is all -inf (no NaN)
        attend = ~pad[:, None, None, :]  # (B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend,
                                           dropout_p=self.attn_dropout if self.training else 0.0)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.resid_drop(self.proj(y))  # (B, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: CameNNConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model)
        self.proj = nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc(x))  # (B, T, F*D)
        return self.drop(self.proj(x))  # (B, T, D)


class TransformerBlock(nn.Module):
    """Pre-norm encoder block (CameNN's bottom, experts and every tower)."""

    def __init__(self, cfg: CameNNConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pad)  # (B, T, D)
        return x + self.mlp(self.ln_2(x))  # (B, T, D)


class MLPBlock(nn.Module):
    """Position-wise block (MMoE frame): tokens never mix, so padding cannot leak."""

    def __init__(self, cfg: CameNNConfig):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln(x))  # (B, T, D)


class LSTMBlock(nn.Module):
    """Recurrent block (MoSE frame).

    Padding sits in the middle of the sequence (text padding inside an item, empty behaviour
    slots), so a plain LSTM would read it. Each row's real tokens are gathered to the front,
    keeping their order, for the forward LSTM, and gathered back to front for the reverse one.
    Both runs read the padding only after the last real token, and those outputs land back on
    padding, so the block is padding-invariant. Both are dense LSTM calls rather than one packed
    bidirectional call: with rows of mixed length a packed sequence leaves oneDNN's fused kernel,
    and a MoSE training step took 4.5 times as long (benchmarks/bench_training_step.py).
    """

    def __init__(self, cfg: CameNNConfig):
        super().__init__()
        D = cfg.d_model
        self.ln = nn.LayerNorm(D)
        self.forward_lstm = nn.LSTM(D, D, batch_first=True)
        self.reverse_lstm = nn.LSTM(D, D, batch_first=True) if cfg.lstm_bidirectional else None
        n_dir = 2 if cfg.lstm_bidirectional else 1
        self.proj = nn.Linear(n_dir * D, D)
        self.drop = nn.Dropout(cfg.dropout)

    @staticmethod
    def _read(lstm: nn.LSTM, h: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Run ``lstm`` over h's tokens taken in ``order`` (a per-row permutation); outputs in place."""
        index = order[..., None].expand_as(h)  # (B, T, D)
        out, _ = lstm(h.gather(1, index))  # (B, T, D) in reading order
        return torch.zeros_like(out).scatter(1, index, out)  # (B, T, D) in the original order

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h = self.ln(x)  # (B, T, D)
        order = torch.argsort(pad.to(torch.uint8), dim=1, stable=True)  # (B, T) real tokens first, in order
        outs = [self._read(self.forward_lstm, h, order)]  # [(B, T, D)]
        if self.reverse_lstm is not None:
            lengths = (~pad).sum(dim=1, keepdim=True)  # (B, 1)
            t = torch.arange(T, device=x.device)  # (T,)
            back_to_front = torch.where(t < lengths, lengths - 1 - t, t)  # (B, T) a permutation of 0..T-1
            outs.append(self._read(self.reverse_lstm, h, order.gather(1, back_to_front)))  # [(B, T, D)] * 2
        h = self.drop(self.proj(torch.cat(outs, dim=-1)))  # (B, T, D); padding positions carry junk, masked later
        return x + h  # (B, T, D)


BLOCKS: dict[str, Callable[[CameNNConfig], nn.Module]] = {
    "transformer": TransformerBlock,
    "mlp": MLPBlock,
    "lstm": LSTMBlock,
}


class BlockStack(nn.Module):
    def __init__(self, kind: str, n_layers: int, cfg: CameNNConfig):
        super().__init__()
        self.blocks = nn.ModuleList([BLOCKS[kind](cfg) for _ in range(n_layers)])

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, pad)  # (B, T, D)
        return x


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of a 1-d tensor: 0 when all entries are equal."""
    x = x.float()
    return x.var(unbiased=False) / (x.mean() ** 2 + 1e-10)


# -----------------------------------------------------------------------------
# the model


class CameNN(nn.Module):
    def __init__(self, cfg: CameNNConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        # frozen encoders differ in scale (BERT vs CNN activations), so each side is normed first
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, D))
        self.image_in = nn.Sequential(nn.LayerNorm(cfg.image_dim), nn.Linear(cfg.image_dim, D))
        self.cls = nn.Parameter(torch.zeros(D))
        self.sep = nn.Parameter(torch.zeros(D))
        self.segment = nn.Embedding(3, D)  # text, image, user
        self.position = nn.Embedding(cfg.item_tokens_max, D)  # within an item
        self.slot = nn.Embedding(cfg.max_behaviour + 1, D)  # 0 = target, 1..N = behaviour slots
        self.item_feats = nn.ModuleDict({k: nn.Embedding(n, D, padding_idx=0) for k, n in cfg.item_feature_sizes.items()})
        self.user_feats = nn.ModuleDict({k: nn.Embedding(n, D, padding_idx=0) for k, n in cfg.user_feature_sizes.items()})
        self.drop = nn.Dropout(cfg.dropout)

        self.bottom = BlockStack(cfg.bottom_type, cfg.n_bottom_layers, cfg)
        self.experts = nn.ModuleList([BlockStack(cfg.expert_type, cfg.expert_layers, cfg) for _ in range(cfg.n_experts)])
        self.gates = nn.ModuleDict({t: nn.Linear(D, cfg.n_experts) for t in cfg.tasks})
        self.towers = nn.ModuleDict({t: BlockStack("transformer", cfg.tower_layers, cfg) for t in cfg.tasks})
        self.ln_f = nn.ModuleDict({t: nn.LayerNorm(D) for t in cfg.tasks})
        self.heads = nn.ModuleDict({t: nn.Linear(D, 1) for t in cfg.tasks})
        # a constant start (no draw from the RNG, so models without the skip initialise as before):
        # 1 / the contrastive temperature, the scale at which that loss compares pairs
        self.skip_scale = nn.ParameterDict({t: nn.Parameter(torch.tensor(10.0)) for t in cfg.tasks
                                            if cfg.alignment_skip and t in ("ita", "tia")})

        self.apply(self._init_weights)
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.sep, std=0.02)
        # zero heads start every task at p = 0.5; zero gates start with uniform expert mixing
        for layer in [*self.heads.values(), *self.gates.values()]:
            nn.init.zeros_(layer.weight)

        # Noisy top-k gating (Shazeer et al. 2017): a per-task noise projection, created only then,
        # so dense models keep their state dict keys. It is built and initialised after everything
        # else, so the other weights of a top-k model draw the same random numbers as a dense one.
        self.gate_noise = None
        if cfg.sparse_gating:
            self.gate_noise = nn.ModuleDict({t: nn.Linear(D, cfg.n_experts) for t in cfg.tasks})
            for t in cfg.tasks:
                # zero noise weights: every row's noise std starts at softplus(0) ~ 0.69 (the paper's
                # init), which in training routes rows to random experts, so every expert gets
                # chosen and trained from the first step. Zero gate weights would leave eval with
                # all-equal logits, where topk's tie-break sends every row to the same k experts;
                # small random ones (logit std ~0.02 at d_model 64, far under the noise) make eval
                # routing depend on the input while the noise decides in training, and keep the
                # softmax over the chosen k near uniform, as dense gating is at the start.
                nn.init.zeros_(self.gate_noise[t].weight)
                nn.init.zeros_(self.gate_noise[t].bias)
                nn.init.normal_(self.gates[t].weight, std=GATE_INIT_STD)

        # fixed token layout inside an item: [CLS]=0, text i=1+i, [SEP] and patches after max_text_tokens
        L, P = cfg.max_text_tokens, cfg.n_patches
        self.register_buffer("text_pos", torch.arange(1, L + 1), persistent=False)
        self.register_buffer("tail_pos", torch.arange(L + 1, L + 2 + P), persistent=False)  # [SEP], patches

    @staticmethod
    def _init_weights(module: nn.Module):
        if isinstance(module, nn.Linear):
            # not nanoGPT's 0.02: that is ~1/sqrt(768) scaled, and at d_model=64 it leaves attention
            # near-uniform, so relational tasks (target vs behaviour, text vs image) sat at the
            # label prior for ~100 steps in tests; a 1/sqrt(fan_in) std learns them in ~50
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- input assembly ------------------------------------------------------

    def _check_ids(self, ids: torch.Tensor, sizes: dict[str, int], what: str):
        if ids.dim() < 1 or ids.shape[-1] != len(sizes):
            raise ValueError(f"{what}: expected {len(sizes)} feature column(s) {list(sizes)}, got shape {tuple(ids.shape)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{what}: expected integer ids, got {ids.dtype}")
        if ids.numel():
            flat = ids.reshape(-1, len(sizes))
            lo, hi = flat.amin(0).tolist(), flat.amax(0).tolist()  # one sync per batch
            for (name, n), a, b in zip(sizes.items(), lo, hi):
                if a < 0 or b >= n:
                    raise ValueError(f"{what}: feature {name!r} ids must be in [0, {n}) (0 = unknown), got [{a}, {b}]")

    def _check_items(self, items: ItemTokens, lead: int, what: str):
        cfg = self.cfg
        t, m, im = items.text, items.text_mask, items.image
        text_dim, image_dim = (cfg.d_model, cfg.d_model) if items.projected else (cfg.text_dim, cfg.image_dim)
        if t.dim() != lead + 2 or t.shape[-1] != text_dim:
            raise ValueError(f"{what}.text: expected {lead + 2} dims ending in {text_dim}, got {tuple(t.shape)}")
        if t.shape[-2] > cfg.max_text_tokens:
            raise ValueError(f"{what}.text: {t.shape[-2]} tokens > max_text_tokens={cfg.max_text_tokens}")
        if m.shape != t.shape[:-1] or m.dtype != torch.bool:
            raise ValueError(f"{what}.text_mask: expected bool {tuple(t.shape[:-1])}, got {m.dtype} {tuple(m.shape)}")
        if im.shape[:-2] != t.shape[:-2] or im.shape[-2:] != (cfg.n_patches, image_dim):
            raise ValueError(f"{what}.image: expected {tuple(t.shape[:-2]) + (cfg.n_patches, image_dim)}, got {tuple(im.shape)}")
        self._check_ids(items.feats, cfg.item_feature_sizes, f"{what}.feats")
        if items.feats.shape[:-1] != t.shape[:-2]:
            raise ValueError(f"{what}.feats: leading dims {tuple(items.feats.shape[:-1])} != {tuple(t.shape[:-2])}")

    def project_items(self, items: ItemTokens) -> ItemTokens:
        """The per-item part of the input: encoder outputs -> d_model tokens (no-op when already projected).

        It depends only on the item's content and the weights, so the nightly job computes it
        once per (content, model version) and caches it (``item_projections``).
        """
        if items.projected:
            return items
        return ItemTokens(self.text_in(items.text),  # (..., L, D)
                          items.text_mask, self.image_in(items.image),  # (..., P, D)
                          items.feats, projected=True)

    def embed_items(self, items: ItemTokens, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token run [CLS] text [SEP] patches per item. items (B', ...), slot (B',) -> x (B', Ti, D), pad (B', Ti)."""
        B, L, _ = items.text.shape
        P = self.cfg.n_patches
        cls = self.cls.expand(B, 1, -1)  # (B', 1, D)
        for j, emb in enumerate(self.item_feats.values()):
            cls = cls + emb(items.feats[:, j])[:, None, :]  # (B', 1, D)
        items = self.project_items(items)
        text = items.text  # (B', L, D)
        sep = self.sep.expand(B, 1, -1)  # (B', 1, D)
        image = items.image  # (B', P, D)
        x = torch.cat([cls, text, sep, image], dim=1)  # (B', Ti, D), Ti = L + 2 + P

        dev = x.device
        pos = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), self.text_pos[:L], self.tail_pos])  # (Ti,)
        seg = torch.tensor([SEG_TEXT] * (L + 2) + [SEG_IMAGE] * P, device=dev)  # (Ti,)
        x = x + self.position(pos) + self.segment(seg)  # (B', Ti, D)
        x = x + self.slot(slot)[:, None, :]  # (B', Ti, D)

        real = torch.ones(B, 1, dtype=torch.bool, device=dev)  # (B', 1)
        pad = ~torch.cat([real, items.text_mask, real.expand(B, 1 + P)], dim=1)  # (B', Ti)
        return x, pad

    def pooled_modalities(self, items: ItemTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit mean of the real projected text tokens and of the projected patches: (B, D), (B, D)."""
        proj = self.project_items(items)
        real = proj.text_mask.unsqueeze(-1).to(proj.text.dtype)  # (B, L, 1)
        t = F.normalize((proj.text * real).sum(1) / real.sum(1).clamp_min(1.0), dim=-1)  # (B, D)
        v = F.normalize(proj.image.mean(1), dim=-1)  # (B, D)
        return t, v

    def embed_items_pooled(self, items: ItemTokens, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Three tokens per item: [CLS], mean text, mean patches. items (B', ...), slot (B',) -> (B', 3, D), (B', 3).

        Each token gets the position and segment its run would give it ([CLS] 0, first text
        token, first patch), so a pooled item reads like a short full one.
        """
        B = items.text.shape[0]
        cls = self.cls.expand(B, -1)  # (B', D)
        for j, emb in enumerate(self.item_feats.values()):
            cls = cls + emb(items.feats[:, j])  # (B', D)
        real = items.text_mask.unsqueeze(-1).to(items.text.dtype)  # (B', L, 1)
        n_text = real.sum(1)  # (B', 1)
        if items.projected:  # the nightly job's cached tokens: average them
            text = (items.text * real).sum(1) / n_text.clamp_min(1.0)  # (B', D) mean over real tokens
            image = items.image.mean(1)  # (B', D)
        else:
            # The mean of the projected tokens, computed as the projection of the mean of the
            # normalised ones: the Linear layer commutes with a mean (its weights sum to 1), so a
            # behaviour item's L + P tokens are normalised but never projected one by one (the
            # projections were a quarter of a demo training step).
            ln_text, lin_text = self.text_in
            ln_image, lin_image = self.image_in
            mean_text = (ln_text(items.text) * real).sum(1) / n_text.clamp_min(1.0)  # (B', Dt)
            text = lin_text(mean_text) * (n_text > 0).to(mean_text.dtype)  # (B', D), 0 for an item without text
            image = lin_image(ln_image(items.image).mean(1))  # (B', D)
        x = torch.stack([cls, text, image], dim=1)  # (B', 3, D)
        dev = x.device
        pos = torch.stack([torch.zeros((), dtype=torch.long, device=dev), self.text_pos[0], self.tail_pos[1]])  # (3,)
        seg = torch.tensor([SEG_TEXT, SEG_TEXT, SEG_IMAGE], device=dev)  # (3,)
        x = x + self.position(pos) + self.segment(seg) + self.slot(slot)[:, None, :]  # (B', 3, D)
        pad = torch.zeros(B, 3, dtype=torch.bool, device=dev)  # (B', 3)
        pad[:, 1] = n_text[:, 0] == 0  # an item without text has no text token
        return x, pad

    def embed(self, batch: CameNNBatch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """E_input. Returns x (B, T, D), pad (B, T) True = padding, and the target's [CLS] index."""
        cfg = self.cfg
        tgt = batch.target
        self._check_items(tgt, 1, "target")
        B = tgt.text.shape[0]
        dev = tgt.text.device
        xs, pads = [], []

        if batch.user_feats is not None:
            if batch.user_feats.shape[0] != B:
                raise ValueError(f"user_feats: batch size {batch.user_feats.shape[0]} != target's {B}")
            self._check_ids(batch.user_feats, cfg.user_feature_sizes, "user_feats")
            if cfg.user_feature_sizes:
                u = torch.stack([emb(batch.user_feats[:, j]) for j, emb in enumerate(self.user_feats.values())], dim=1)  # (B, Fu, D)
                u = u + self.segment.weight[SEG_USER]  # (B, Fu, D)
                xs.append(u)
                pads.append(torch.zeros(B, u.shape[1], dtype=torch.bool, device=dev))

        if batch.behaviour is not None:
            beh = batch.behaviour
            self._check_items(beh, 2, "behaviour")
            Bb, N = beh.text.shape[:2]
            if Bb != B:
                raise ValueError(f"behaviour: batch size {Bb} != target's {B}")
            if N > cfg.max_behaviour:
                raise ValueError(f"behaviour: {N} slots > max_behaviour={cfg.max_behaviour}")
            mask = batch.behaviour_mask
            if mask is None:
                mask = torch.ones(B, N, dtype=torch.bool, device=dev)
            elif mask.shape != (B, N) or mask.dtype != torch.bool:
                raise ValueError(f"behaviour_mask: expected bool {(B, N)}, got {mask.dtype} {tuple(mask.shape)}")
            if N:
                flat = ItemTokens(beh.text.flatten(0, 1), beh.text_mask.flatten(0, 1), beh.image.flatten(0, 1),
                                  beh.feats.flatten(0, 1), projected=beh.projected)
                slot = torch.arange(1, N + 1, device=dev).repeat(B)  # (B*N,)
                embed_behaviour = self.embed_items_pooled if cfg.behaviour_tokens == "pooled" else self.embed_items
                xb, pb = embed_behaviour(flat, slot)  # (B*N, Tb, D), (B*N, Tb); Tb = 3 when pooled
                Tb = xb.shape[1]
                pb = pb | ~mask.reshape(B * N, 1)  # (B*N, Tb) an empty slot is padding end to end
                xs.append(xb.reshape(B, N * Tb, -1))  # (B, N*Tb, D)
                pads.append(pb.reshape(B, N * Tb))  # (B, N*Tb)

        xt, pt = self.embed_items(tgt, torch.zeros(B, dtype=torch.long, device=dev))  # (B, Tt, D), (B, Tt)
        cls_idx = sum(x.shape[1] for x in xs)
        xs.append(xt)
        pads.append(pt)
        x = torch.cat(xs, dim=1)  # (B, T, D)
        pad = torch.cat(pads, dim=1)  # (B, T)
        return self.drop(x), pad, cls_idx

    # --- forward -------------------------------------------------------------

    def gate_weights(self, task: str, pooled: torch.Tensor) -> torch.Tensor:
        """Expert weights (B, M) of ``task`` for gate inputs ``pooled`` (B, D); noisy in training with top_k."""
        return self.gate(task, pooled)[0]

    def gate(self, task: str, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weights (B, M), load-balancing loss (a scalar), None for dense gating).

        Noisy top-k (Shazeer et al. 2017, eq. 3-5 and 6-10): in training H = x W_g + N(0, 1) *
        softplus(x W_noise), in eval H = x W_g (deterministic scoring); the weights are the
        softmax over the k largest H, the others exactly 0. The loss is CV^2(importance) +
        CV^2(load) over the batch: importance = the summed weights per expert, load = the smooth
        number of rows per expert (the paper's normal-CDF estimate; hard counts in eval, where
        there is no noise to smooth with).
        """
        logits = self.gates[task](pooled)  # (B, M)
        if not self.cfg.sparse_gating:
            return logits.softmax(dim=-1), None  # (B, M)
        k = self.cfg.top_k
        clean = logits.float()  # (B, M) fp32 under autocast too: the CDF below needs the precision
        if self.training:
            noise_std = F.softplus(self.gate_noise[task](pooled).float()) + GATE_NOISE_EPS  # (B, M)
            noisy = clean + torch.randn_like(clean) * noise_std  # (B, M)
        else:
            noisy = clean  # (B, M)
        top, idx = noisy.topk(k + 1, dim=-1)  # (B, k+1) k < M here, so the (k+1)-th exists
        # softmax over the chosen k only: the others get exactly 0, not a small leak
        weights = torch.zeros_like(noisy).scatter(-1, idx[:, :k], top[:, :k].softmax(dim=-1))  # (B, M)
        importance = weights.sum(0)  # (M,)
        if self.training:
            # P(expert i in the top k | the others' noisy logits) = Phi((clean_i - bar_i) / std_i),
            # bar_i = the k-th largest noisy logit among the other experts: the (k+1)-th overall
            # for an expert that is in, the k-th overall for one that is out
            bar_in, bar_out = top[:, k:k + 1], top[:, k - 1:k]  # (B, 1), (B, 1)
            bar = torch.where(noisy > bar_in, bar_in, bar_out)  # (B, M)
            load = torch.special.ndtr((clean - bar) / noise_std).sum(0)  # (M,)
        else:
            load = torch.zeros_like(noisy).scatter(-1, idx[:, :k], 1.0).sum(0)  # (M,) rows per expert
        return weights, cv_squared(importance) + cv_squared(load)

    def _task_list(self, tasks) -> tuple[str, ...]:
        if tasks is None:
            return self.cfg.tasks
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        unknown = [t for t in tasks if t not in self.cfg.tasks]
        if unknown or not tasks:
            raise ValueError(f"tasks {list(tasks)}: this model has tasks {list(self.cfg.tasks)}")
        return tasks

    def forward(self, batch: CameNNBatch, tasks: tuple[str, ...] | str | None = None) -> dict:
        """Logits (B,) of ``tasks`` (default: all of the model's), their gate weights under "gates"
        (task -> (B, M)) and the gates' load-balancing loss under "gate_aux_loss" (a scalar, the sum
        over ``tasks``; 0 for dense gating). NON_TASK_OUTPUTS names the keys that are not tasks.

        A task not asked for is not computed: its gate, tower and head are skipped. Training
        asks for CVR on full batches and for ITA/TIA on item-only ones, which saves the towers
        whose loss would be zero there (a third of the blocks of a full batch).
        """
        tasks = self._task_list(tasks)
        x, pad, cls_idx = self.embed(batch)  # (B, T, D), (B, T)
        real = (~pad).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * real).sum(1) / real.sum(1).clamp_min(1.0)  # (B, D) gate input: mean of E_input

        x = self.bottom(x, pad)  # (B, T, D)
        # every expert runs on every row, even with top_k: top-k here regularises, it does not save compute
        ex = torch.stack([expert(x, pad) for expert in self.experts], dim=1)  # (B, M, T, D)

        out: dict = {}
        skip = None
        if any(t in self.skip_scale for t in tasks):
            t_unit, v_unit = self.pooled_modalities(batch.target)  # (B, D), (B, D)
            skip = (t_unit * v_unit).sum(-1).float()  # (B,) cosine of the target's text and image
        gates: dict[str, torch.Tensor] = {}
        aux = torch.zeros((), device=x.device)  # () the gates' load-balancing loss, summed over tasks
        for task in tasks:
            g, balance = self.gate(task, pooled)  # (B, M), () or None
            if balance is not None:
                aux = aux + balance  # ()
            xk = torch.einsum("bm,bmtd->btd", g.to(ex.dtype), ex)  # (B, T, D)
            h = self.towers[task](xk, pad)  # (B, T, D)
            h = self.ln_f[task](h[:, cls_idx])  # (B, D) the target's [CLS]
            out[task] = self.heads[task](h).squeeze(-1).float()  # (B,)
            if task in self.skip_scale:
                out[task] = out[task] + self.skip_scale[task].float() * skip  # (B,)
            gates[task] = g.float()
        out["gates"] = gates
        out["gate_aux_loss"] = aux
        return out

    @torch.no_grad()
    def predict(self, batch: CameNNBatch, tasks: tuple[str, ...] | str | None = None) -> dict[str, torch.Tensor]:
        """Probabilities per task, in eval mode (the previous mode is restored)."""
        tasks = self._task_list(tasks)
        was_training = self.training
        self.eval()
        try:
            out = self(batch, tasks)
        finally:
            self.train(was_training)
        return {t: torch.sigmoid(out[t]) for t in tasks}  # each (B,)


# -----------------------------------------------------------------------------
# factory: a frame is a named set of config defaults (timm's register_model, in small)

_FRAMES: dict[str, dict] = {}


def register_frame(name: str, **defaults):
    if name in _FRAMES:
        raise ValueError(f"frame {name!r} is already registered")
    CameNNConfig(**defaults)  # fail at import, not at first use
    _FRAMES[name] = defaults


register_frame("camenn", bottom_type="transformer", expert_type="transformer")
register_frame("mmoe", bottom_type="mlp", expert_type="mlp")
register_frame("mose", bottom_type="lstm", expert_type="lstm")
register_frame("single_task", bottom_type="transformer", expert_type="transformer", tasks=("cvr",), n_experts=1)


def list_frames() -> list[str]:
    return sorted(_FRAMES)


def frame_config(name: str, **overrides) -> CameNNConfig:
    if name not in _FRAMES:
        raise ValueError(f"unknown frame {name!r}; known frames: {list_frames()}")
    return CameNNConfig(**{**_FRAMES[name], **overrides})


def create_model(name: str, **overrides) -> CameNN:
    return CameNN(frame_config(name, **overrides))


def create_model_from_config(cfg: CameNNConfig) -> CameNN:
    return CameNN(cfg)


# -----------------------------------------------------------------------------
# cost model


def sequence_length(cfg: CameNNConfig, n_behaviour: int = 0, n_text_tokens: int | None = None,
                    with_user: bool | None = None) -> int:
    """Tokens in E_input for one row (behaviour items assumed to have the same text length)."""
    L = cfg.max_text_tokens if n_text_tokens is None else n_text_tokens
    with_user = n_behaviour > 0 if with_user is None else with_user
    n_user = len(cfg.user_feature_sizes) if with_user else 0
    per_behaviour = 3 if cfg.behaviour_tokens == "pooled" else L + 2 + cfg.n_patches
    return n_user + n_behaviour * per_behaviour + (L + 2 + cfg.n_patches)


def _block_flops(kind: str, cfg: CameNNConfig, T: int) -> int:
    D, Fm = cfg.d_model, cfg.ffn_mult
    mlp = 2 * T * 2 * Fm * D * D
    if kind == "mlp":
        return mlp
    if kind == "transformer":
        return 2 * T * 4 * D * D + 4 * T * T * D + mlp  # qkv+proj, QK^T and AV, mlp
    n_dir = 2 if cfg.lstm_bidirectional else 1
    return n_dir * 2 * T * 4 * (D * D + D * D) + 2 * T * n_dir * D * D  # gates (input+hidden), proj


def count_flops_per_item(cfg: CameNNConfig, n_behaviour: int = 0, n_text_tokens: int | None = None,
                         with_user: bool | None = None) -> int:
    """Forward matmul FLOPs (2 per multiply-add) for one row; the default is an item-only row.

    Counts every expert (top_k does not skip any, see CameNN.forward); ignores norms,
    activations and embedding lookups, which are small next to the matmuls.
    """
    D, M = cfg.d_model, cfg.n_experts
    L = cfg.max_text_tokens if n_text_tokens is None else n_text_tokens
    T = sequence_length(cfg, n_behaviour, n_text_tokens, with_user)
    n_items, n_tasks = n_behaviour + 1, len(cfg.tasks)
    flops = n_items * 2 * (L * cfg.text_dim * D + cfg.n_patches * cfg.image_dim * D)  # input projections
    flops += cfg.n_bottom_layers * _block_flops(cfg.bottom_type, cfg, T)
    flops += M * cfg.expert_layers * _block_flops(cfg.expert_type, cfg, T)
    flops += n_tasks * (2 * D * M + 2 * M * T * D)  # gates, expert mixing
    flops += n_tasks * cfg.tower_layers * _block_flops("transformer", cfg, T)
    flops += n_tasks * 2 * D  # heads
    return int(flops)


__all__ = [
    "TASKS", "BLOCK_TYPES", "BEHAVIOUR_TOKENS", "NON_TASK_OUTPUTS", "CameNNConfig", "ItemTokens", "CameNNBatch", "CameNN",
    "cv_squared",
    "TransformerBlock", "MLPBlock", "LSTMBlock", "BlockStack",
    "register_frame", "list_frames", "frame_config", "create_model", "create_model_from_config",
    "sequence_length", "count_flops_per_item",
]
