"""
nanoPoly model: a one-file GPT (dense or mixture-of-experts) whose FFN activation is one argument, built around the
Polynomial Composition activations (PolyCom) of Zhuo et al., "Polynomial Composition Activations: Unleashing the
Dynamics of Large Language Models" (ICLR 2025, arXiv 2411.03884). Everything around the FFN is a visible GPTConfig
knob; "Fidelity to the paper" in docs/guide.md lists where a default differs from the official models.

Reading order: the activations as formulas and their registry ACTIVATIONS (to add an activation: one entry there,
plus a test) -> config -> FFN (widths: ffn_hidden_size) -> MoE -> attention -> block -> GPT -> the fast paths
(closed-form autograd Functions, grouped matmul) that compute exactly the plain code above with less memory and time.
"""

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Activations, as their formulas. x: (..., H), the FFN hidden pre-activation of a token; i = 1..r, r = poly_order.
#   type I  (power after a pointwise base ρ): f(x) = a_0 + Σ_i a_i · ρ(x)^i    PolyReLU (ρ = relu), PolyPReLU (prelu)
#   type II (base after the power):           f(x) = a_0 + Σ_i a_i · ρ(x^i)    PolyNorm (ρ = N)
# The coefficient layout is the official code's, so its checkpoints load as they are: `weight` (r,) whose element 0
# multiplies the HIGHEST power and element r-1 the first; `bias` (1,) is a_0.


def rms_norm(u, eps=1e-6):
    """N(u) = u / sqrt(mean(u², last dim) + eps): the RMS over one token's FFN width, no gain (the official code)."""
    return u / torch.sqrt(u.pow(2).mean(dim=-1, keepdim=True) + eps)


def poly_of_base(x, weight, bias, rho):
    """Type I: a_0 + Σ_i a_i · ρ(x)^i."""
    r = weight.numel()
    return bias + sum(weight[r - i] * rho(x) ** i for i in range(1, r + 1))


def poly_norm(x, weight, bias, eps=1e-6):
    """Type II with ρ = N: a_0 + Σ_i a_i · N(x^i), x^i element-wise."""
    r = weight.numel()
    return bias + sum(weight[r - i] * rms_norm(x ** i, eps) for i in range(1, r + 1))


TYPE_ONE_BASES = {'relu': torch.relu, 'gelu': F.gelu, 'silu': F.silu, 'prelu': F.prelu}   # prelu(x, layer's slope)
POLYCOM_BASES = (*TYPE_ONE_BASES, 'norm', 'relu_norm')


class PolyCom(nn.Module):
    """A learnable PolyCom activation: r scalar weights and one bias per layer (none per channel), paper init a_i = 1/r,
    a_0 = 0. base: a key of TYPE_ONE_BASES (type I), 'norm' (PolyNorm) or 'relu_norm' (PolyReLUNorm).
    formula() is the definition. forward() in eager mode gives the same numbers through the closed-form Functions at the
    end of the file, which save only the input for backward (plain autograd keeps ~3x a GELU's), and computes in fp32
    under bf16 autocast (x^6 has no useful bf16 precision). fast = False, and torch.compile, run formula() instead."""

    fast = True

    def __init__(self, order=3, base='relu', eps=1e-6):
        super().__init__()
        if not isinstance(order, int) or not 1 <= order <= MAX_POLY_ORDER:
            raise ValueError(f"PolyCom order must be an integer from 1 to {MAX_POLY_ORDER}, got {order!r}")
        if base not in POLYCOM_BASES:
            raise ValueError(f"unknown PolyCom base {base!r}; valid choices: {', '.join(POLYCOM_BASES)}")
        self.order, self.base, self.eps = order, base, eps
        self.weight = nn.Parameter(torch.full((order,), 1.0 / order))   # paper init: every a_i = 1/r
        self.bias = nn.Parameter(torch.zeros(1))                          # paper init: a_0 = 0
        # PReLU's negative slope: one learnable scalar per layer like the coefficients, 0.25 at init as torch's PReLU
        self.slope = nn.Parameter(torch.full((1,), 0.25)) if base == 'prelu' else None

    def formula(self, x):
        if self.base in ('norm', 'relu_norm'):
            return poly_norm(torch.relu(x) if self.base == 'relu_norm' else x, self.weight, self.bias, self.eps)
        rho = (lambda u: F.prelu(u, self.slope)) if self.base == 'prelu' else TYPE_ONE_BASES[self.base]
        return poly_of_base(x, self.weight, self.bias, rho)

    def forward(self, x):
        # Under torch.compile the plain formula: inductor fuses its passes and picks what backward keeps. The Functions
        # compiled by inductor gave wrong gradients on CUDA (torch 2.11, H200: 90% of a tiny GPT's wte gradient off);
        # on CPU (bench's config, paired rounds) the formula's compiled step takes 0.979x (PolyNorm) and 0.947x (PolyReLU)
        # the time of theirs, and it compiles 3-6x faster
        if not self.fast or torch.compiler.is_compiling():
            return self.formula(x.to(_compute_dtype(x))).to(x.dtype)
        # no gradient wanted (evaluation, generation): the Functions' own forward code without autograd's bookkeeping,
        # which costs a quarter of a one-token call (generation with a KV cache makes one per token and layer)
        if self.base in ('norm', 'relu_norm'):      # relu saves its output: the very tensor PolyNormFunction saves
            args = (torch.relu(x) if self.base == 'relu_norm' else x, self.weight, self.bias, self.eps)
            return PolyNormFunction.apply(*args) if torch.is_grad_enabled() else PolyNormFunction.values(*args)[0]
        args = (x, self.weight, self.bias, self.base, self.slope)
        return PolyBaseFunction.apply(*args) if torch.is_grad_enabled() else PolyBaseFunction.values(*args)

    def extra_repr(self):
        return f"order={self.order}, base={self.base}"


class PolyReLU(PolyCom):
    """f(x) = a_0 + Σ_i a_i relu(x)^i (type I, ρ = ReLU)"""

    def __init__(self, order=3):
        super().__init__(order, base='relu')


class PolyNorm(PolyCom):
    """f(x) = a_0 + Σ_i a_i N(x^i) (type II, ρ = N, eps inside the sqrt)"""

    def __init__(self, order=3, eps=1e-6):
        super().__init__(order, base='norm', eps=eps)


class PolyPReLU(PolyCom):
    """f(x) = a_0 + Σ_i a_i prelu(x)^i, prelu(x) = max(0, x) + α min(0, x), α learnable (type I, ρ = PReLU)"""

    def __init__(self, order=3):
        super().__init__(order, base='prelu')


class PolyReLUNorm(PolyCom):
    """f(x) = a_0 + Σ_i a_i N(relu(x)^i): PolyNorm of relu(x), ReLU composed with the normalization. The paper names
    it without a formula; N(relu(x^i)) would be the other reading (it differs in the even powers)."""

    def __init__(self, order=3, eps=1e-6):
        super().__init__(order, base='relu_norm', eps=eps)


class Pointwise(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _relu_squared(x):
    return torch.square(torch.relu(x))


@dataclass(frozen=True)
class ActivationSpec:
    build: object        # build(poly_order) -> nn.Module applied to the FFN hidden pre-activation (..., H)
    gated: bool = False  # gated FFNs multiply act(x W_gate) by x W_up and get 2/3 of the hidden width


# The activation registry: name -> how to build it. This is the place to add yours (plus a test).
ACTIVATIONS = {
    'relu': ActivationSpec(lambda r: Pointwise(F.relu)),
    'gelu': ActivationSpec(lambda r: Pointwise(F.gelu)),
    'silu': ActivationSpec(lambda r: Pointwise(F.silu)),
    'relu2': ActivationSpec(lambda r: Pointwise(_relu_squared)),              # squared ReLU (Primer)
    'swiglu': ActivationSpec(lambda r: Pointwise(F.silu), gated=True),        # silu(x W_gate) * (x W_up)
    'polyrelu': ActivationSpec(lambda r: PolyReLU(r)),                        # PolyCom type I, base relu
    'polygelu': ActivationSpec(lambda r: PolyCom(r, base='gelu')),            # PolyCom type I, base gelu
    'polysilu': ActivationSpec(lambda r: PolyCom(r, base='silu')),            # PolyCom type I, base silu
    'polynorm': ActivationSpec(lambda r: PolyNorm(r)),                        # PolyCom type II, RMS norm
    'polyprelu': ActivationSpec(lambda r: PolyPReLU(r)),                      # PolyCom type I, base prelu
    'polyrelunorm': ActivationSpec(lambda r: PolyReLUNorm(r)),                # PolyNorm of relu(x)
    'polynorm_glu': ActivationSpec(lambda r: PolyNorm(r), gated=True),        # PolyNorm(x W_gate) * (x W_up) (Motif)
}


def build_activation(name, poly_order=3):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid choices: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name].build(poly_order)


# -----------------------------------------------------------------------------
# Config


@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False          # biases in Linear layers and LayerNorm (the paper uses none)
    activation: str = 'gelu'    # any key of ACTIVATIONS
    poly_order: int = 3         # r, the degree of the PolyCom polynomial (1..8)
    ffn_hidden: int = 0         # 0 = the paper's rule (ffn_hidden_size); > 0 = the non-gated width (gated: 2/3 of it)
    arch: str = 'modern'        # 'modern': RMSNorm + RoPE (the paper's); 'gpt2': LayerNorm + learned positions
    tie_weights: bool = True    # share the token embedding with the output head (ours; the paper's models: untied)
    norm_eps: float = 0.0       # 0 = auto: RMSNorm 1e-6 (ours), LayerNorm 1e-5 (nanoGPT's); the paper's RMSNorm: 1e-5
    qk_norm: bool = False       # norm over the whole q and k projections before RoPE (OLMoE: yes; paper's dense: no)
    rope_theta: float = 10000.0
    init_seed: int = 1337       # each parameter is drawn from its own generator seeded by (init_seed, name)
    init_std: float = 0.02      # std of every weight matrix (GPT-2's); the paper's dense model 0.013975, OLMoE 0.02
    init_residual_scale: bool = True   # residual projections get init_std/sqrt(2*n_layer) (GPT-2, Megatron; OLMoE: no)
    init_cutoff: float = 0.0    # > 0: normal truncated at ±init_cutoff·std (OLMoE: 3); 0 = plain (GPT-2, Megatron)
    # mixture of experts (n_expert = 0 means a dense model)
    n_expert: int = 0
    top_k: int = 2
    moe_every: int = 1          # an MoE FFN in every moe_every-th block (1 = every block)
    expert_hidden: int = 0      # 0 = auto, the same rule as ffn_hidden
    norm_topk: bool = False     # renormalise the k chosen router probabilities to sum to 1 (Mixtral: yes; OLMoE: no)
    aux_loss_weight: float = 0.01   # Switch load-balancing loss weight (the paper: 0.01)
    z_loss_weight: float = 0.001    # router z-loss weight (the paper: 0.001)
    z_loss_scaling: str = 'st-moe'  # 'st-moe': mean over tokens of logsumexp²; 'megablocks': that / top_k (see MoE)
    shared_expert: bool = False     # one always-on expert beside the routed ones
    per_expert_poly: bool = False   # one set of PolyCom coefficients per expert (official code: one per layer)

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid choices: {', '.join(ACTIVATIONS)}")
        if not isinstance(self.poly_order, int) or not 1 <= self.poly_order <= MAX_POLY_ORDER:
            raise ValueError(f"poly_order must be an integer from 1 to {MAX_POLY_ORDER}, got {self.poly_order!r}")
        if self.arch not in ('modern', 'gpt2'):
            raise ValueError(f"unknown arch {self.arch!r}; valid choices: modern, gpt2")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.arch == 'modern' and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"RoPE needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}; "
                             f"change n_embd or n_head, or use arch='gpt2'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ffn_hidden < 0 or self.expert_hidden < 0:
            raise ValueError(f"ffn_hidden and expert_hidden must be >= 0 (0 = the paper's width rule), "
                             f"got {self.ffn_hidden} and {self.expert_hidden}")
        if self.norm_eps < 0:
            raise ValueError(f"norm_eps must be >= 0 (0 = auto), got {self.norm_eps}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.init_cutoff < 0:
            raise ValueError(f"init_cutoff must be >= 0 (0 = an untruncated normal), got {self.init_cutoff}")
        if self.z_loss_scaling not in Z_LOSS_SCALINGS:
            raise ValueError(f"unknown z_loss_scaling {self.z_loss_scaling!r}; valid choices: "
                             f"{', '.join(Z_LOSS_SCALINGS)}")
        if self.aux_loss_weight < 0 or self.z_loss_weight < 0:
            raise ValueError(f"aux_loss_weight and z_loss_weight must be >= 0 (0 = off), "
                             f"got {self.aux_loss_weight} and {self.z_loss_weight}")
        if self.n_expert < 0:
            raise ValueError(f"n_expert must be >= 0 (0 = dense), got {self.n_expert}")
        if self.n_expert > 0:
            if self.top_k < 1:
                raise ValueError(f"top_k must be >= 1, got {self.top_k}; set --top_k=1 or more")
            if self.top_k > self.n_expert:
                raise ValueError(f"top_k ({self.top_k}) cannot exceed n_expert ({self.n_expert}); "
                                 f"set --top_k to at most {self.n_expert} or raise --n_expert")
            if self.moe_every < 1:
                raise ValueError(f"moe_every must be >= 1, got {self.moe_every}")


MAX_POLY_ORDER = 8
Z_LOSS_SCALINGS = ('st-moe', 'megablocks')


def ffn_hidden_size(n_embd, activation, requested=0):
    """Hidden width of an FFN (or of one expert). A gated FFN (SwiGLU) has three matrices, the others two, so it gets
    2/3 of the width to hold as many weights.
    requested = 0, the paper's rule: gated = 2/3 · 4·n_embd rounded UP to a multiple of 64, non-gated = 1.5x the gated
        width (n_embd = 2048: 5504 and 8256). Then 3 · n_embd · gated = 2 · n_embd · non-gated at every n_embd.
    requested > 0: the non-gated width; gated FFNs get 2/3 of it rounded to the nearest multiple of 64 (at least 64),
        which matches exactly when 2/3 of requested is a multiple of 64 (576 -> 384, 1536 -> 1024)."""
    gated = ACTIVATIONS[activation].gated
    if requested > 0:
        return max(64, int(round(requested * 2 / 3 / 64)) * 64) if gated else requested
    gated_width = -(-8 * n_embd // (3 * 64)) * 64          # ceil((2/3 · 4 · n_embd) / 64) · 64, in integers
    return gated_width if gated else gated_width * 3 // 2


def upgrade_model_args(model_args):
    """model_args of a checkpoint -> the GPTConfig arguments that rebuild its model. Checkpoints whose model_args have
    no `norm_topk` were made by a model.py whose auto FFN width was 4·n_embd (gated: 2/3 of it rounded to a multiple
    of 64) and whose router always renormalised its top-k weights: spell both out. Other model_args pass unchanged."""
    args = dict(model_args)
    if 'norm_topk' not in args:
        four_d = 4 * args.get('n_embd', GPTConfig.n_embd)
        args['ffn_hidden'] = args.get('ffn_hidden', 0) or four_d
        args['expert_hidden'] = args.get('expert_hidden', 0) or four_d
        args['norm_topk'] = True
    return args


# -----------------------------------------------------------------------------
# Dense FFN: W_proj · act(W_fc · x), or for gated activations W_proj · (act(W_gate · x) * W_fc · x)


class MLP(nn.Module):
    def __init__(self, config, hidden=None):
        super().__init__()
        self.hidden = hidden or ffn_hidden_size(config.n_embd, config.activation, config.ffn_hidden)
        self.gated = ACTIVATIONS[config.activation].gated
        self.c_fc = nn.Linear(config.n_embd, self.hidden, bias=config.bias)
        self.c_gate = nn.Linear(config.n_embd, self.hidden, bias=config.bias) if self.gated else None
        self.act = build_activation(config.activation, config.poly_order)
        self.c_proj = nn.Linear(self.hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):                                   # x: (B, T, C)
        h = self.c_fc(x)                                    # (B, T, hidden)
        h = self.act(self.c_gate(x)) * h if self.gated else self.act(h)
        return self.dropout(self.c_proj(h))                 # (B, T, C)


# -----------------------------------------------------------------------------
# Mixture of experts: top-k routing, dropless. What it computes, one token x (C,) at a time (tests/test_moe.py's loop):
#     probs = softmax(x W_router)                   (E,) in fp32
#     weights, experts = top_k(probs)               (k,), renormalised to sum to 1 if norm_topk
#     y = Σ_j weights[j] · FFN_{experts[j]}(x)      FFN_e(x) = act(x W_fc[e]) W_proj[e]
#                                                  (gated: FFN_e(x) = (act(x W_gate[e]) ⊙ x W_fc[e]) W_proj[e])
# The code does this for all tokens at once: sort the (token, expert) pairs by expert so that each expert's tokens
# are one contiguous slice, one grouped matmul per weight (grouped_matmul, at the end of the file), then unsort,
# weight and sum. The shapes stay fixed, so torch.compile sees no data-dependent sizes.


def _group_bounds(offsets):
    """offsets (G,) cumulative group ends -> list of (start, end). .tolist() is a host sync (and a graph break
    under torch.compile), so only the loop fallback of grouped_matmul and per-expert coefficients use it."""
    ends = offsets.tolist()
    return list(zip([0] + ends[:-1], ends))


class MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, n_expert = config.n_embd, config.n_expert
        self.n_expert, self.top_k = n_expert, config.top_k
        self.norm_topk, self.z_loss_scaling = config.norm_topk, config.z_loss_scaling
        self.hidden = ffn_hidden_size(d, config.activation, config.expert_hidden)
        self.gated = ACTIVATIONS[config.activation].gated
        self.router = nn.Linear(d, n_expert, bias=False)
        # expert weights stacked so one grouped matmul serves all experts: (E, in, out)
        self.w_fc = nn.Parameter(torch.empty(n_expert, d, self.hidden))
        self.w_gate = nn.Parameter(torch.empty(n_expert, d, self.hidden)) if self.gated else None
        self.w_proj = nn.Parameter(torch.empty(n_expert, self.hidden, d))
        if config.per_expert_poly:
            self.acts = nn.ModuleList(build_activation(config.activation, config.poly_order) for _ in range(n_expert))
            self.act = None
        else:   # the official code: one activation (one set of PolyCom coefficients) shared by the layer's experts
            self.act, self.acts = build_activation(config.activation, config.poly_order), None
        self.shared = MLP(config, self.hidden) if config.shared_expert else None
        self.dropout = nn.Dropout(config.dropout)

    def route(self, x):
        """x: (N, C) -> top-k expert ids (N, k), their weights (N, k), router probs (N, E), logits (N, E).
        Softmax over all E experts in fp32 (outside autocast): bf16 probabilities are too coarse to rank and balance
        64 experts. The weights are the chosen experts' softmax probabilities as they are (OLMoE, whose megablocks
        router does not renormalise; the paper's MoE is OLMoE), or with norm_topk=True divided by their sum so they add
        up to 1 (Mixtral): the output then has a dense FFN's scale whatever E and k are, but with k = 1 the weight is
        always 1 and the router learns only from the load-balancing and z losses."""
        router_dtype = torch.promote_types(x.dtype, torch.float32)     # fp32, or fp64 in the tests
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.to(router_dtype), self.router.weight.to(router_dtype))   # (N, E)
        probs = logits.softmax(dim=-1)
        top_weight, top_expert = probs.topk(self.top_k, dim=-1)            # (N, k)
        if self.norm_topk:
            top_weight = top_weight / top_weight.sum(dim=-1, keepdim=True)
        return top_expert, top_weight, probs, logits

    def activation(self, h, offsets):
        if self.acts is None:
            return self.act(h)
        # per-expert coefficients: one call per expert slice (a host sync, see _group_bounds)
        return torch.cat([self.acts[g](h[s:e]) for g, (s, e) in enumerate(_group_bounds(offsets))], dim=0)

    def experts(self, x_sorted, offsets):
        """x_sorted: (N*k, C) rows grouped by expert; offsets: (E,) int32 group ends. -> (N*k, C)"""
        dtype = x_sorted.dtype
        h = grouped_matmul(x_sorted, self.w_fc.to(dtype), offsets)                      # (N*k, hidden)
        if self.gated:
            h = self.activation(grouped_matmul(x_sorted, self.w_gate.to(dtype), offsets), offsets) * h
        else:
            h = self.activation(h, offsets)
        return grouped_matmul(h.to(dtype), self.w_proj.to(dtype), offsets)              # (N*k, C)

    def forward(self, x):
        B, T, C = x.shape
        x_flat = x.reshape(B * T, C)                                         # (N, C)
        top_expert, top_weight, probs, logits = self.route(x_flat)
        N, k, E = B * T, self.top_k, self.n_expert

        # dispatch: sort the N*k (token, expert) pairs by expert so each expert's tokens are one contiguous slice.
        # Shapes stay fixed (N*k rows), so torch.compile sees no data-dependent sizes.
        flat_expert = top_expert.reshape(-1)                                 # (N*k,)
        order = flat_expert.argsort(stable=True)                             # (N*k,) pair index, grouped by expert
        tokens_per_expert = torch.zeros(E, device=x.device, dtype=torch.int64).scatter_add_(
            0, flat_expert, torch.ones_like(flat_expert))                    # (E,)
        offsets = tokens_per_expert.cumsum(0).to(torch.int32)                # (E,) end of each expert's slice
        compute_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) \
            else x.dtype
        unsort = torch.empty_like(order).scatter_(0, order, torch.arange(N * k, device=x.device))   # order⁻¹
        x_sorted = gather_rows(x_flat.to(compute_dtype), order // k, unsort)   # = x_flat[order // k], (N*k, C)
        y_sorted = self.experts(x_sorted, offsets)                           # (N*k, C)

        # combine: undo the sort, then weight each token's k expert outputs (a gather, deterministic, no atomics)
        y = gather_rows(y_sorted, unsort, order)                             # = y_sorted[unsort], (N*k, C)
        y = y.reshape(N, k, C).to(top_weight.dtype)                          # weighted sum in fp32 (or fp64)
        y = (y * top_weight.unsqueeze(-1)).sum(dim=1).to(x.dtype).reshape(B, T, C)
        if self.shared is not None:
            y = y + self.shared(x)

        # Switch load balancing E · Σ_i f_i P_i (1.0 at perfect balance): f_i = fraction of routed pairs, P_i = mean
        # router prob. megablocks computes the same number as E/(N·k) · Σ_i count_i · P_i.
        load = tokens_per_expert.float() / (N * k)                            # (E,)
        balance_loss = E * (load * probs.mean(dim=0)).sum()
        return self.dropout(y), (balance_loss, self.z_loss(logits), load.detach())

    def z_loss(self, logits):
        """Router z-loss, which keeps the router logits small. logits: (N, E) -> scalar.
        'st-moe' (ST-MoE, Zoph et al. 2022, who introduced it): mean over the N tokens of logsumexp(logits)²; its
        strength does not depend on k. 'megablocks' (the scale of OLMo's megablocks integration): the same sum divided
        by N·k, i.e. k times smaller, so a weight tuned there carries over. The paper states weight 0.001 for its
        OLMoE-based MoE, but the official MoE trainer adds neither this nor the balance loss to its objective:
        aux_loss_weight = z_loss_weight = 0 reproduces that."""
        z = torch.logsumexp(logits, dim=-1).square().mean()
        return z / self.top_k if self.z_loss_scaling == 'megablocks' else z


# -----------------------------------------------------------------------------
# Attention, normalization, position encoding


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1 and we keep nanoGPT's spelling)."""

    def __init__(self, dim, bias, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def norm_eps(config):
    """config.norm_eps, or where it is 0 the arch's own: RMSNorm 1e-6 (ours), LayerNorm 1e-5 (GPT-2's, nanoGPT's)."""
    return config.norm_eps or (1e-6 if config.arch == 'modern' else 1e-5)


def make_norm(config):
    if config.arch == 'modern':
        return RMSNorm(config.n_embd, norm_eps(config))
    return LayerNorm(config.n_embd, config.bias, norm_eps(config))


def rope_tables(head_size, block_size, theta):
    """cos, sin tables of shape (block_size, head_size/2) for rotary position embeddings (Su et al. 2021)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """x: (B, nh, T, hs); rotate each pair (x1_i, x2_i) of the two halves by the angle of its position."""
    x1, x2 = x.chunk(2, dim=-1)                             # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)             # (T, hs/2), broadcast over B and nh
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm as in OLMoE: one norm (with a gain) over the whole q and one over the whole k projection, all heads
        # together, before RoPE. It bounds the attention logits, which keeps large-model training stable.
        self.q_norm = make_norm(config) if config.qk_norm else None
        self.k_norm = make_norm(config) if config.qk_norm else None

    def forward(self, x, rope=None, cache=None):
        """x: (B, T, C). cache (generation only, see KVCache): this layer's keys and values of the positions before x;
        x's positions continue after them, and its own keys and values are appended."""
        B, T, C = x.shape
        start = cache.length if cache is not None else 0                     # x's first position
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)                  # (B, T, C) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if rope is not None:
            cos, sin = rope[0][start:start + T], rope[1][start:start + T]   # (T, hs/2) at x's positions
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            y = cache.attend(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    def __init__(self, config, use_moe):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MoE(config) if use_moe else MLP(config)

    def forward(self, x, rope=None, cache=None):
        x = x + self.attn(self.ln_1(x), rope, cache)
        if isinstance(self.mlp, MoE):
            y, moe_stats = self.mlp(self.ln_2(x))
            return x + y, moe_stats
        return x + self.mlp(self.ln_2(x)), None


# -----------------------------------------------------------------------------
# GPT


RESIDUAL_PROJECTIONS = ('attn.c_proj.weight', 'mlp.c_proj.weight', 'mlp.w_proj', 'mlp.shared.c_proj.weight')


class GPT(nn.Module):
    def __init__(self, config, verbose=True):
        super().__init__()
        self.config = config
        moe_layers = [config.n_expert > 0 and (i + 1) % config.moe_every == 0 for i in range(config.n_layer)]
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd) if config.arch == 'gpt2' else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, use_moe) for use_moe in moe_layers),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        if config.arch == 'modern':
            cos, sin = rope_tables(config.n_embd // config.n_head, config.block_size, config.rope_theta)
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        self.init_parameters()
        if verbose:
            total, active = self.num_params(), self.num_active_params()
            print(f"parameters: {total / 1e6:.2f}M total, {active / 1e6:.2f}M active, "
                  f"FFN {self.num_ffn_params() / 1e6:.2f}M ({config.activation})")

    @torch.no_grad()
    def init_parameters(self):
        """Normal(0, init_std) for every matrix (embeddings, router and output head included), residual projections
        scaled by 1/sqrt(2*n_layer) if init_residual_scale (GPT-2, Megatron), truncated at ±init_cutoff·std if
        init_cutoff > 0 (OLMoE); norms 1; biases 0; PolyCom coefficients keep their paper init (1/r, 0). Each parameter
        draws from its own generator seeded by (init_seed, name), so models that differ only in their FFN get identical
        attention and embeddings."""
        c = self.config
        std = c.init_std
        for name, p in self.named_parameters():
            if '.act.' in name or '.acts.' in name:
                continue                                     # PolyCom coefficients (and slope): set in PolyCom
            if p.dim() < 2:
                p.fill_(1.0 if name.endswith('weight') else 0.0)
                continue
            residual = c.init_residual_scale and name.endswith(RESIDUAL_PROJECTIONS)
            scale = std / math.sqrt(2 * c.n_layer) if residual else std
            generator = torch.Generator().manual_seed(c.init_seed * 1_000_003 + zlib.crc32(name.encode()))
            if c.init_cutoff > 0:
                bound = c.init_cutoff * scale
                p.copy_(nn.init.trunc_normal_(torch.empty(p.shape), 0.0, scale, -bound, bound, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)

    # ---- parameter accounting

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if self.transformer.wpe is not None:
                n -= self.transformer.wpe.weight.numel()
        return n

    def _inactive_expert_params(self):
        """Parameters of the experts a token does not visit: (E - k)/E of each MoE layer's expert weights."""
        inactive = 0
        for block in self.transformer.h:
            if isinstance(block.mlp, MoE):
                m = block.mlp
                expert_params = sum(p.numel() for p in (m.w_fc, m.w_gate, m.w_proj) if p is not None)
                inactive += expert_params * (m.n_expert - m.top_k) // m.n_expert
        return inactive

    def num_active_params(self, non_embedding=False):
        return self.num_params(non_embedding) - self._inactive_expert_params()

    def num_ffn_params(self):
        return sum(p.numel() for block in self.transformer.h for p in block.mlp.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B: 6 per active matmul weight
        plus 12 * n_layer * n_embd * T for attention scores and values. The output head counts, embeddings do not."""
        c = self.config
        n = self.num_active_params()
        n -= 0 if c.tie_weights else self.transformer.wte.weight.numel()   # a lookup, not a matmul
        n -= self.transformer.wpe.weight.numel() if self.transformer.wpe is not None else 0
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size

    # ---- forward

    def embed(self, idx, start=0):
        """idx: (B, T) tokens at positions start .. start+T-1 (start > 0: after a KV cache's) -> (B, T, C)."""
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}; "
                             f"crop the input or train with a larger --block_size")
        x = self.transformer.wte(idx)                                        # (B, T, C)
        if self.transformer.wpe is not None:
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        return self.transformer.drop(x)

    def rope(self):
        return (self.rope_cos, self.rope_sin) if self.config.arch == 'modern' else None

    def forward(self, idx, targets=None, return_aux=False):
        """idx, targets: (B, T) int64. Returns logits and the mean cross-entropy (None without targets); with
        return_aux=True also a dict of MoE auxiliary terms, kept apart from the cross-entropy so they log separately."""
        x = self.embed(idx)
        moe_stats = []
        for block in self.transformer.h:
            x, stats = block(x, self.rope())
            if stats is not None:
                moe_stats.append(stats)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)                                          # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None                  # (B, 1, V): only what generate needs
        if not return_aux:
            return logits, loss
        return logits, loss, self._aux_terms(moe_stats, x)

    def _aux_terms(self, moe_stats, x):
        zero = x.new_zeros((), dtype=torch.float32)
        if not moe_stats:
            return dict(balance_loss=zero, z_loss=zero, aux_total=zero, expert_load=x.new_zeros((0, 0)))
        balance = torch.stack([s[0] for s in moe_stats]).mean()
        z = torch.stack([s[1] for s in moe_stats]).mean()
        total = self.config.aux_loss_weight * balance + self.config.z_loss_weight * z
        return dict(balance_loss=balance, z_loss=z, aux_total=total, expert_load=torch.stack([s[2] for s in moe_stats]))

    # ---- generation

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, kv_cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T). temperature 0 means greedy; top_k keeps the k likeliest.
        Each token is predicted from the last block_size tokens before it (nanoGPT's crop). kv_cache=False runs the
        whole window through the model for every token; kv_cache=True keeps every layer's keys and values, so the
        prompt runs once and then one token per step, with the same predictions. Past block_size the window slides:
        every position moves and every cached key changes, so each further step refills the cache from the new window
        (exact, but no faster than kv_cache=False). Generation runs in eval mode (no dropout), whatever the mode, and
        under torch.inference_mode (~10% faster than no_grad on CPU at this size); the result is a plain tensor."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if not isinstance(kv_cache, bool):
            raise ValueError(f"kv_cache must be True or False, got {kv_cache!r}")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                caches = None
                for _ in range(max_new_tokens):
                    if kv_cache:
                        logits, caches = self.next_logits_cached(idx, caches)
                    else:
                        logits, _ = self(idx[:, -self.config.block_size:])
                    idx = torch.cat((idx, sample_token(logits[:, -1, :], temperature, top_k)), dim=1)
        finally:
            self.train(was_training)
        return idx.clone()          # outside inference mode: a tensor a later forward may save for backward

    def next_logits_cached(self, idx, caches):
        """The logits (B, 1, V) of the token after idx (B, T), and caches (one KVCache per layer, None at the first
        step) holding the keys and values of idx's window, the last block_size tokens. When the caches hold all of
        idx but its newest token and have room for one more, only that token runs; otherwise (the first step, or past
        block_size) the whole window refills fresh caches."""
        block_size = self.config.block_size
        if caches is None or caches[0].length != idx.shape[1] - 1 or caches[0].length == block_size:
            caches = [KVCache(block_size) for _ in self.transformer.h]
            return self.forward_cached(idx[:, -block_size:], caches), caches
        return self.forward_cached(idx[:, -1:], caches), caches

    def forward_cached(self, idx, caches):
        """idx: (B, T) the tokens right after the positions caches hold -> logits (B, 1, V) of the next token. The
        generation forward: no targets, no MoE aux terms (each token is routed as in forward, per token)."""
        x = self.embed(idx, start=caches[0].length)
        for block, cache in zip(self.transformer.h, caches):
            x, _ = block(x, self.rope(), cache)
        return self.lm_head(self.transformer.ln_f(x[:, [-1], :]))            # (B, 1, V)

    # ---- training helpers

    def configure_optimizers(self, weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type='cpu'):
        """AdamW with weight decay on matrices only (dim >= 2: Linear, embedding and expert weights). Norm gains,
        biases and PolyCom coefficients are not decayed: pulling them towards 0 would change the function's shape.
        The defaults are train.py's knob defaults; train.py, bench.py and compare.py all build their optimizer here."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        fused = device_type == 'cuda'
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    # ---- introspection for analyses and logs

    def activations(self):
        """The FFN activation module of each layer (per-expert ones: the first expert's)."""
        return [b.mlp.act if b.mlp.act is not None else b.mlp.acts[0] for b in self.transformer.h]

    def poly_coefficients(self):
        """{'layer{i}.a{p}': value}: a_p multiplies the p-th power, a0 is the bias (empty for fixed activations)."""
        out = {}
        for i, act in enumerate(self.activations()):
            if isinstance(act, PolyCom):
                w = _increasing_order(act.weight.detach().float().cpu())
                for p in range(act.order, 0, -1):
                    out[f'layer{i}.a{p}'] = w[p - 1].item()
                out[f'layer{i}.a0'] = act.bias.item()
        return out

    def ffn_weight_matrices(self):
        """{name: 2-D weight} of every FFN matrix, experts split out, for effective-rank analysis."""
        out = {}
        for i, b in enumerate(self.transformer.h):
            for name, p in b.mlp.named_parameters():
                if p.dim() == 2 and 'router' not in name:
                    out[f'layer{i}.{name}'] = p.detach()
                elif p.dim() == 3:
                    for e in range(p.shape[0]):
                        out[f'layer{i}.{name}.expert{e}'] = p[e].detach()
        return out

    @torch.no_grad()
    def hidden_states(self, idx):
        """Residual stream after the embedding and after each block: n_layer+1 tensors of shape (B, T, C)."""
        x = self.embed(idx)
        states = [x]
        for block in self.transformer.h:
            x, _ = block(x, self.rope())
            states.append(x)
        return states


# -----------------------------------------------------------------------------
# Generation: sampling one token, and the KV cache of one attention layer


def sample_token(logits, temperature, top_k=None):
    """logits: (B, V) -> (B, 1) token ids: the argmax for temperature 0, else a draw from softmax(logits /
    temperature) restricted to the top_k likeliest (None: all)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):      # top_k >= V keeps every token: nothing to mask
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


class KVCache:
    """One attention layer's keys and values during generation: buffers k, v of shape (B, nh, capacity, hs) whose
    first `length` positions are filled, allocated at the first append with the shape, dtype and device of its
    keys. Written in place, so a step costs no copy of the earlier positions."""

    def __init__(self, capacity):
        self.capacity, self.length, self.k, self.v = capacity, 0, None, None

    def append(self, k, v):
        """k, v: (B, nh, T, hs) of the next T positions -> the keys and values of every position so far, each
        (B, nh, length, hs)."""
        B, nh, T, hs = k.shape
        if self.length + T > self.capacity:
            raise ValueError(f"the KV cache holds {self.capacity} positions (block_size); {self.length} are filled "
                             f"and {T} more do not fit")
        if self.k is None:
            self.k, self.v = k.new_empty(B, nh, self.capacity, hs), v.new_empty(B, nh, self.capacity, hs)
        self.k[:, :, self.length:self.length + T] = k
        self.v[:, :, self.length:self.length + T] = v
        self.length += T
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def attend(self, q, k, v):
        """Causal attention of the next T positions: q, k, v (B, nh, T, hs) -> (B, nh, T, hs). Appends k and v;
        each query sees every earlier cached position and the new ones up to its own."""
        start, T = self.length, q.shape[2]
        keys, values = self.append(k, v)                                     # (B, nh, start + T, hs)
        if start == 0 or T == 1:        # a fresh cache: plain causal; one query: it sees every position
            return F.scaled_dot_product_attention(q, keys, values, is_causal=start == 0)
        mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start)   # query i sees keys <= start+i
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


# =============================================================================
# Fast paths. Everything below computes exactly what the plain code above computes: PolyCom.formula() and the MoE's
# per-token meaning (tests/test_model.py and tests/test_moe.py compare them, values and gradients). It exists for
# memory and speed only; a reader of the model can stop here.
# - PolyCom Functions: plain autograd of Σ a_p N(x^p) keeps x, x², x³, three normed tensors and more for backward,
#   ~3x a GELU FFN's activation memory. These save only x (PolyNorm also r inverse RMS values per token) and compute
#   the gradients in closed form: the bench model saves 367.9 MiB vs GELU's 367.7 MiB (docs/guide.md, "Memory").
#   Powers and norms are computed in (at least) fp32, also under bf16 autocast.
# - grouped_matmul: the MoE's experts as one grouped product per weight instead of a loop over experts, with a
#   backward built from forward calls, registered as a custom op so that torch.compile(fullgraph=True) works.
# - gather_rows: the MoE's dispatch and combine gather rows in backward too, where indexing's own backward would
#   scatter with accumulation (index_put_), which is serial on CPU.


def _compute_dtype(x):
    return torch.promote_types(x.dtype, torch.float32)   # fp32 for fp16/bf16/fp32 inputs, fp64 stays fp64


# On CPU these activations are memory-bound: the FFN hidden tensor (B*T, hidden) is 16-32 MB at the bench config,
# larger than the caches, and each of the ~20 elementwise passes of forward + backward would stream it from DRAM. So
# eager CPU runs all passes over one block of rows before the next block: x, g and the temporaries of a 2 MB block
# stay in cache. Measured (2 threads, forward + backward of a (4096, 1024) fp32 tensor, 16 x 256 tokens): PolyNorm
# 20.9 -> 11.1 ms, PolyReLU 23.0 -> 11.1 ms (GELU: 3.8 ms); on the MoE's (8192, 1024): 62 -> 21 ms. Blocks of 0.5 to
# 8 MB were tried, 2 MB was best. On GPU the whole tensor is one block. (Under torch.compile, which fuses the passes
# itself, PolyCom runs its plain formula and these Functions do not run.)
ROW_BLOCK_BYTES = 2 * 1024 * 1024


def _row_blocks(x):
    """x: (N, H) -> slices of rows, ~ROW_BLOCK_BYTES each on eager CPU, one slice of all rows otherwise."""
    n = x.shape[0]
    if x.device.type != 'cpu':
        return [slice(0, n)]
    rows = max(1, ROW_BLOCK_BYTES // (x.shape[1] * x.element_size()))
    # no rows (an MoE expert that got no token): one empty block, so every pass and sum still runs, on nothing
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)] or [slice(0, 0)]


def _block_buffers(x, blocks, count):
    """count scratch buffers of one block's shape, reused by every block: a fresh 2 MB temporary per block and pass
    comes from the allocator each time, and its pages may fault again (PolyNorm forward + backward of a (4096, 1056)
    fp32 tensor, 2 threads: 13.5 -> 11.9 ms)."""
    rows = blocks[0].stop - blocks[0].start
    return [x.new_empty(rows, x.shape[-1]) for _ in range(count)]


def _polynomial(x, coefs, constant, out=None):
    """constant + Σ_{p=1..r} coefs[..., p-1] · x^p by Horner's rule, in one output buffer: r elementwise passes and
    no stored powers. x: (..., H); coefs: (..., r) one set per row, or (r,) shared; constant: broadcastable to x.
    out: the buffer to write (a fresh tensor when None); it must not be x."""
    r = coefs.shape[-1]
    # c_r x by torch.mul, then add: addcmul(c_{r-1}, x, c_r) with both coefficients broadcast runs ~3x slower on CPU
    # (200 vs 70 us for a 2 MB block); addcmul whose multiplicand is a full tensor (the steps after) is fast
    out = torch.mul(x, coefs[..., r - 1:r], out=out)                      # c_r x
    if r == 1:
        return out.add_(constant)
    out.add_(coefs[..., r - 2:r - 1])                                     # c_{r-1} + c_r x
    for p in range(r - 2, 0, -1):
        torch.addcmul(coefs[..., p - 1:p], x, out, out=out)               # out = c_p + x * out
    return torch.addcmul(constant, x, out, out=out)


def _increasing_order(weight):
    """(r,) in the official layout (highest power first) -> (r,) whose element p-1 multiplies x^p."""
    return weight.flip(0)


# A few rows (generation with the KV cache: one token per call and layer) cost the fixed price of each op, not memory
# traffic: all r powers at once in one (N, r, H) tensor, then one weighted sum (not a matmul, which autocast would run
# in bf16), is ~10 ops where the blocked loop takes ~25 (one token, H = 576, no grad: 117 -> 70 us a call; GELU 22 us).
FEW_ROWS = 16


def _polynorm_few_rows(xc, w, b, eps):
    """PolyNorm of a few rows. xc: (N, H); w: (r,) coefficient of x^p at p-1; b: (1,) -> y (N, H), s (N, r)."""
    powers = xc.unsqueeze(-2).expand(-1, w.numel(), -1).cumprod(dim=-2)    # (N, r, H): x, x², ..., x^r
    s = torch.rsqrt(powers.square().mean(dim=-1) + eps)                     # (N, r): the inverse RMS of each power
    y = (powers * (s * w).unsqueeze(-1)).sum(dim=-2) + b                     # (N, H): b + Σ_p w_p s_p x^p
    return y, s


class PolyNormFunction(torch.autograd.Function):
    """y = bias + Σ_p w_p · s_p · x^p with s_p = (mean(x^(2p)) + eps)^(-1/2) per row. Saves x and s (N, r)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, inv_rms = PolyNormFunction.values(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, inv_rms)
        return y

    @staticmethod
    def values(x, weight, bias, eps):
        """The forward without autograd: y (shape and dtype of x) and s (N, r). PolyCom calls it directly when no
        gradient is wanted."""
        xc = x.to(_compute_dtype(x)).reshape(-1, x.shape[-1])   # (N, H)
        r, width = weight.numel(), xc.shape[-1]
        w, b = _increasing_order(weight).to(xc.dtype), bias.to(xc.dtype)
        if xc.shape[0] <= FEW_ROWS:
            y, inv_rms = _polynorm_few_rows(xc, w, b, eps)
            return y.view(x.shape).to(x.dtype), inv_rms
        y, inv_rms = torch.empty_like(xc), xc.new_empty(xc.shape[0], r)   # (N, H), (N, r)
        blocks = _row_blocks(xc)
        buffer, = _block_buffers(xc, blocks, 1)
        for rows in blocks:
            xb = xc[rows]
            # s_p from mean((x^p)²) = ||x^p||² / H, one power buffer multiplied by x in place
            power, s = xb, []
            for p in range(1, r + 1):
                if p == 2:
                    power = torch.mul(xb, xb, out=buffer[:xb.shape[0]])
                elif p > 2:
                    power.mul_(xb)
                s.append(torch.rsqrt(torch.linalg.vector_norm(power, dim=-1).square() / width + eps))
            inv_rms[rows] = torch.stack(s, dim=-1)
            _polynomial(xb, inv_rms[rows] * w, b, out=y[rows])
        return y.view(x.shape).to(x.dtype), inv_rms

    @staticmethod
    def backward(ctx, grad_out):
        # With g = dL/dy, s_p the inverse RMS of x^p and d_p = <g, x^p> (a dot product over the row of width H):
        #   dL/dx   = Σ_p w_p (p x^{p-1} s_p g − (p/H) s_p³ d_p x^{2p-1})
        #   dL/dw_p = Σ_rows s_p d_p,   dL/dbias = Σ g
        x, weight, inv_rms = ctx.saved_tensors
        xc = x.to(_compute_dtype(x)).reshape(-1, x.shape[-1])   # (N, H)
        g = grad_out.to(xc.dtype).reshape(xc.shape)
        r, width = weight.numel(), xc.shape[-1]
        w = _increasing_order(weight).to(xc.dtype)
        p = torch.arange(1, r + 1, device=x.device, dtype=xc.dtype)   # (r,) the powers 1..r
        grad_x, dots, g_sums = torch.empty_like(xc), xc.new_empty(xc.shape[0], r), xc.new_empty(xc.shape[0])
        blocks = _row_blocks(xc)
        buffers = _block_buffers(xc, blocks, 2)
        for rows in blocks:
            xb, gb, s, gx = xc[rows], g[rows], inv_rms[rows], grad_x[rows]
            scratch, odd = (b[:xb.shape[0]] for b in buffers)
            # d_p = <g, x^p>: multiply one copy of g by x, one power at a time
            torch.mul(gb, xb, out=scratch)
            d = [scratch.sum(-1)]
            for _ in range(r - 1):
                d.append(scratch.mul_(xb).sum(-1))
            d = torch.stack(d, dim=-1)                              # (n, r)
            dots[rows], g_sums[rows] = d, gb.sum(-1)
            # first term: g · Σ_p p w_p s_p x^{p-1}, a polynomial of degree r-1 in x
            slope = p * w * s                                       # (n, r)
            if r > 1:
                _polynomial(xb, slope[:, 1:], slope[:, :1], out=gx)
            else:
                gx.copy_(slope[:, :1].expand_as(xb))
            gx.mul_(gb)
            # second term: Σ_p k_p x^{2p-1} = x · Σ_p k_p (x²)^{p-1}, with k_p = (p/H) w_p s_p³ d_p
            k = p / width * w * s.pow(3) * d                        # (n, r)
            odd = _polynomial(torch.mul(xb, xb, out=scratch), k[:, 1:], k[:, :1], out=odd) if r > 1 else k[:, :1]
            gx.addcmul_(xb, odd, value=-1.0)
        grad_weight = _increasing_order((inv_rms * dots).sum(0)).to(weight.dtype)
        grad_bias = g_sums.sum().reshape(1).to(weight.dtype)
        return grad_x.view(x.shape).to(x.dtype), grad_weight, grad_bias, None


# Each base: x (and PReLU's negative slope a, which the others ignore) -> ρ(x), ρ'(x)
def _relu_and_slope(x, a=None):
    rho = torch.relu(x)
    return rho, torch.sign(rho)   # 1 where x > 0, else 0; (x > 0).to(x.dtype) takes ~8x longer on CPU


def _prelu_and_slope(x, a):
    positive = x > 0
    return torch.where(positive, x, a * x), torch.where(positive, torch.ones_like(x), a)


def _gelu_and_slope(x, a=None):
    # gelu(x) = x Φ(x), gelu'(x) = Φ(x) + x φ(x)
    cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return x * cdf, cdf + x * pdf


def _silu_and_slope(x, a=None):
    # silu(x) = x σ(x), silu'(x) = σ(x) (1 + x (1 − σ(x)))
    sig = torch.sigmoid(x)
    return x * sig, sig * (1.0 + x * (1.0 - sig))


POINTWISE_BASES = {'relu': _relu_and_slope, 'prelu': _prelu_and_slope, 'gelu': _gelu_and_slope,
                   'silu': _silu_and_slope}


class PolyBaseFunction(torch.autograd.Function):
    """Type I PolyCom: y = bias + Σ_p w_p ρ(x)^p for a pointwise base ρ (PReLU: with its slope a, shape (1,)).
    Saves only x; ρ(x) is recomputed."""

    @staticmethod
    def forward(ctx, x, weight, bias, base, slope=None):
        ctx.save_for_backward(x, weight, slope)
        ctx.base = base
        return PolyBaseFunction.values(x, weight, bias, base, slope)

    @staticmethod
    def values(x, weight, bias, base, slope=None):
        """The forward without autograd (PolyCom calls it directly when no gradient is wanted)."""
        xc = x.to(_compute_dtype(x)).reshape(-1, x.shape[-1])   # (N, H)
        w, b = _increasing_order(weight).to(xc.dtype), bias.to(xc.dtype)
        a = slope.to(xc.dtype) if slope is not None else None
        y = torch.empty_like(xc)
        blocks = _row_blocks(xc)
        buffer, = _block_buffers(xc, blocks, 1)
        for rows in blocks:
            xb = xc[rows]
            if base == 'relu':   # relu: no slope needed
                rho = torch.clamp_min(xb, 0.0, out=buffer[:xb.shape[0]])
            else:
                rho = POINTWISE_BASES[base](xb, a)[0]
            _polynomial(rho, w, b, out=y[rows])
        return y.view(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        # dL/dx = g · ρ'(x) · Σ_p p w_p ρ^{p-1};  dL/dw_p = Σ g ρ^p;  dL/dbias = Σ g
        # PReLU: dL/da = Σ g · Σ_p p w_p ρ^{p-1} · min(x, 0)
        x, weight, slope_a = ctx.saved_tensors
        xc = x.to(_compute_dtype(x)).reshape(-1, x.shape[-1])   # (N, H)
        g = grad_out.to(xc.dtype).reshape(xc.shape)
        r = weight.numel()
        w = _increasing_order(weight).to(xc.dtype)
        a = slope_a.to(xc.dtype) if slope_a is not None else None
        slope = torch.arange(1, r + 1, device=x.device, dtype=xc.dtype) * w      # (r,): p w_p
        grad_x, sums, a_sums = torch.empty_like(xc), [], []
        blocks = _row_blocks(xc)
        buffer, = _block_buffers(xc, blocks, 1)
        for rows in blocks:
            xb, gb, gx = xc[rows], g[rows], grad_x[rows]
            rho, rho_slope = POINTWISE_BASES[ctx.base](xb, a)
            # Σ g ρ^p for p = 0..r (p = 0: the bias): one copy of g multiplied by ρ one power at a time
            scratch = torch.mul(gb, rho, out=buffer[:xb.shape[0]])
            block_sums = [gb.sum(), scratch.sum()]
            for _ in range(r - 1):
                block_sums.append(scratch.mul_(rho).sum())
            sums.append(torch.stack(block_sums))                    # (r+1,)
            if r > 1:
                _polynomial(rho, slope[1:], slope[:1], out=gx)
            else:
                gx.copy_(slope[:1].expand_as(xb))
            gx.mul_(gb)
            if a is not None:
                a_sums.append((gx * xb.clamp(max=0)).sum())
            gx.mul_(rho_slope)
        sums = torch.stack(sums).sum(0)                             # (r+1,) over all blocks
        grad_weight = _increasing_order(sums[1:]).to(weight.dtype)
        grad_bias = sums[:1].to(weight.dtype)
        grad_a = torch.stack(a_sums).sum().reshape(1).to(slope_a.dtype) if a is not None else None
        return grad_x.view(x.shape).to(x.dtype), grad_weight, grad_bias, None, grad_a


class GatherRows(torch.autograd.Function):
    """out = x[index] for the MoE's dispatch and combine, whose index is a permutation of the N*k (token, expert)
    pairs, or that permutation // k (each token's row taken k times). back: the inverse permutation, so the gradient
    is a gather as well: grad_x[i] = Σ_j grad_out[back[i*k + j]], k = len(index) / len(x). Indexing's own backward
    scatters with accumulation (index_put_): at the bench config the eager MoE step's indexing took 33 ms (profiler,
    forward gathers and index_put_ together), gathering both ways 16 ms."""

    @staticmethod
    def forward(ctx, x, index, back):
        ctx.save_for_backward(back)
        ctx.k = index.shape[0] // x.shape[0]
        return x[index]

    @staticmethod
    def backward(ctx, grad_out):
        back, = ctx.saved_tensors
        grad = grad_out[back]                                          # (N*k, C), pair order
        if ctx.k > 1:
            grad = grad.view(-1, ctx.k, grad.shape[-1]).sum(dim=1)     # (N, C): each token's k pairs
        return grad, None, None


def gather_rows(x, index, back):
    """x[index] (rows), with the gradient gathered through back (see GatherRows)."""
    return GatherRows.apply(x, index, back)


def _torch_grouped_mm():
    """torch's grouped matmul: F.grouped_mm (torch >= 2.10), else torch._grouped_mm (2.8 and 2.9, the same
    arguments), else None (older torch: the per-expert loop)."""
    return getattr(F, 'grouped_mm', None) or getattr(torch, '_grouped_mm', None)


_GROUPED_MM_RUNS = {}   # (function, device type, dtype) -> whether a tiny grouped product ran and was right


def _usable_grouped_mm(a, b):
    """torch's grouped matmul if it can take a and b, else None (then: the per-expert loop). It runs on CPU for
    fp32/bf16/fp16 (forward only; we write the backward from forward calls) and on CUDA for bf16 from SM 80; it needs
    16-byte aligned rows; float64 takes the loop (the tests' exact reference). It is tried once per device and dtype:
    torch 2.8 has no CPU kernel and needs SM 90, so an error there means the loop, never a crash in training."""
    fn = _torch_grouped_mm()
    if fn is None or a.dtype != b.dtype or a.shape[-1] % 8 != 0 or b.shape[-1] % 8 != 0:
        return None
    if a.device.type == 'cpu':
        usable = a.dtype in (torch.float32, torch.bfloat16, torch.float16)
    else:
        usable = a.device.type == 'cuda' and a.dtype == torch.bfloat16 and \
            torch.cuda.get_device_capability(a.device)[0] >= 8
    key = (fn, a.device.type, a.dtype)
    if usable and key not in _GROUPED_MM_RUNS:
        ones = torch.ones(16, 8, device=a.device, dtype=a.dtype)
        offsets = torch.tensor([8, 16], device=a.device, dtype=torch.int32)
        try:
            _GROUPED_MM_RUNS[key] = bool((fn(ones, ones.view(2, 8, 8), offs=offsets) == 8).all()) and \
                bool((fn(ones.t(), ones, offs=offsets) == 8).all())
        except (RuntimeError, NotImplementedError, TypeError):
            _GROUPED_MM_RUNS[key] = False
    return fn if usable and _GROUPED_MM_RUNS[key] else None


def _grouped_matmul_eager(a, b, offsets):
    """out[rows of group g] = a[rows of group g] @ b[g]. a: (M, K) sorted by group; b: (G, K, N); offsets: (G,) int32."""
    grouped_mm = _usable_grouped_mm(a, b)
    if grouped_mm is not None:
        return grouped_mm(a, b, offs=offsets)
    return torch.cat([a[s:e] @ b[g] for g, (s, e) in enumerate(_group_bounds(offsets))], dim=0)


def _grouped_weight_grad_eager(a, grad_out, offsets):
    """out[g] = a[rows of g]^T @ grad_out[rows of g]: (G, K, N). The 2-D x 2-D grouped_mm needs the row count
    aligned to 16 bytes, so pad with zero rows (they add nothing to any group)."""
    grouped_mm = _usable_grouped_mm(a, grad_out)
    if grouped_mm is not None:
        pad = (-a.shape[0]) % 16
        if pad:
            a, grad_out = F.pad(a, (0, 0, 0, pad)), F.pad(grad_out, (0, 0, 0, pad))
        return grouped_mm(a.t(), grad_out, offs=offsets)
    return torch.stack([a[s:e].t() @ grad_out[s:e] for s, e in _group_bounds(offsets)], dim=0)


# The grouped matmul is registered as a custom op so that torch.compile treats it as one opaque kernel with a known
# output shape: no graph break, even for the loop fallback and its host sync. (Tracing torch's grouped_mm directly
# fails on CPU: its shape function accepts only bf16.) torch's grouped_mm has no CPU backward, but the backward is
# two more grouped products, dA = dY @ B^T and dB = A^T @ dY per group, so we build it from forward calls.
# torch.library.custom_op, register_fake and register_autograd exist from torch 2.4 (the GPU machine has 2.11).

@torch.library.custom_op("nanopoly::grouped_matmul", mutates_args=())
def grouped_matmul(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return _grouped_matmul_eager(a, b, offsets)


@grouped_matmul.register_fake
def _(a, b, offsets):
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("nanopoly::grouped_weight_grad", mutates_args=())
def grouped_weight_grad(a: torch.Tensor, grad_out: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return _grouped_weight_grad_eager(a, grad_out, offsets)


@grouped_weight_grad.register_fake
def _(a, grad_out, offsets):
    return a.new_empty(offsets.shape[0], a.shape[1], grad_out.shape[1])


def _grouped_matmul_setup_context(ctx, inputs, output):
    a, b, offsets = inputs
    ctx.save_for_backward(a, b, offsets)


def _grouped_matmul_backward(ctx, grad_out):
    a, b, offsets = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    grad_a = grouped_matmul(grad_out, b.transpose(1, 2), offsets)     # (M, K)
    grad_b = grouped_weight_grad(a, grad_out, offsets)                # (G, K, N)
    return grad_a, grad_b, None


grouped_matmul.register_autograd(_grouped_matmul_backward, setup_context=_grouped_matmul_setup_context)
