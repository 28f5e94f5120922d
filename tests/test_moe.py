"""The MoE FFN: top-k routing (OLMoE's raw top-k probabilities or Mixtral's renormalised ones), dropless grouped
experts, Switch load balancing and router z-loss at ST-MoE's or megablocks' scale, the paper's expert widths, and the
OLMoE-based paper preset."""

import copy
import math
import os
import sys
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from configurator import read_config_file
import model
from model import GPT, MLP, GPTConfig, grouped_matmul, MoE, ffn_hidden_size

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import REPO, make_char_dataset, read_log, run_script  # noqa: E402


def moe_config(**overrides):
    settings = dict(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=48, activation='polynorm',
                    n_expert=4, top_k=2, expert_hidden=64)
    settings.update(overrides)
    return GPTConfig(**settings)


def naive_moe(moe, x):
    """One token at a time: softmax over all experts, top-k, renormalise if norm_topk, sum the chosen experts' FFN
    outputs weighted by their router weights (with per_expert_poly, each expert's own activation)."""
    B, T, C = x.shape
    out = []
    for token in x.reshape(-1, C):
        probs = F.softmax(token @ moe.router.weight.t(), dim=-1)
        weights, experts = probs.topk(moe.top_k)
        if moe.norm_topk:
            weights = weights / weights.sum()
        y = torch.zeros_like(token)
        for w, e in zip(weights, experts):
            act = moe.act if moe.acts is None else moe.acts[e]
            h = token @ moe.w_fc[e]
            h = act(token @ moe.w_gate[e]) * h if moe.gated else act(h.unsqueeze(0)).squeeze(0)
            y = y + w * (h @ moe.w_proj[e])
        out.append(y)
    return torch.stack(out).reshape(B, T, C)


@pytest.mark.parametrize("activation, norm_topk", [("polynorm", False), ("swiglu", False), ("gelu", False),
                                                  ("polynorm", True), ("swiglu", True)])
def test_moe_output_and_gradients_equal_a_per_token_loop_in_float64(activation, norm_topk):
    torch.manual_seed(0)
    moe = MoE(moe_config(activation=activation, norm_topk=norm_topk)).double()
    for p in moe.parameters():
        p.data.normal_(0, 0.3) if p.dim() > 1 else None
    x = torch.randn(2, 5, 48, dtype=torch.float64, requires_grad=True)
    y, _ = moe(x)
    upstream = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *moe.parameters()], upstream)

    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = naive_moe(moe, x_ref)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *moe.parameters()], upstream)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for (name, _), g, g_ref in zip([('x', None), *moe.named_parameters()], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10, msg=f"gradient of {name} differs")


def test_grouped_matmul_fast_path_equals_the_loop_in_float32():
    """float32 on CPU takes torch's grouped_mm (forward) and our backward; float64 takes the plain loop."""
    torch.manual_seed(0)
    counts = torch.tensor([5, 0, 7, 4])                       # an expert with no tokens included
    offsets = counts.cumsum(0).to(torch.int32)
    a = torch.randn(16, 32, requires_grad=True)
    b = torch.randn(4, 32, 24, requires_grad=True)
    y = grouped_matmul(a, b, offsets)
    g = torch.randn_like(y)
    grad_a, grad_b = torch.autograd.grad(y, [a, b], g)
    a64, b64 = a.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    y64 = grouped_matmul(a64, b64, offsets)
    grad_a64, grad_b64 = torch.autograd.grad(y64, [a64, b64], g.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_a.double(), grad_a64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_b.double(), grad_b64, rtol=1e-5, atol=1e-5)
    assert grad_b[1].abs().sum() == 0                          # the empty expert gets a zero gradient


def test_one_expert_top_one_equals_the_dense_ffn():
    cfg = moe_config(n_expert=1, top_k=1, expert_hidden=0)
    torch.manual_seed(0)
    moe, dense = MoE(cfg), MLP(cfg)
    with torch.no_grad():
        dense.c_fc.weight.copy_(torch.randn_like(dense.c_fc.weight) * 0.1)
        dense.c_proj.weight.copy_(torch.randn_like(dense.c_proj.weight) * 0.1)
        moe.w_fc.copy_(dense.c_fc.weight.t().unsqueeze(0))
        moe.w_proj.copy_(dense.c_proj.weight.t().unsqueeze(0))
        moe.act.load_state_dict(dense.act.state_dict())
    x = torch.randn(2, 8, 48)
    y, _ = moe(x)
    torch.testing.assert_close(y, dense(x), rtol=1e-5, atol=1e-6)


def router_with_logits(logits, **overrides):
    """An MoE over 4 experts whose router gives every token exactly these logits (x = first basis vector)."""
    moe = MoE(moe_config(n_expert=4, **overrides)).double()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, 0] = torch.tensor(logits, dtype=torch.float64)
    x = torch.zeros(3, 48, dtype=torch.float64)
    x[:, 0] = 1.0
    return moe, x


def test_router_weights_are_raw_top_k_probabilities_by_default_and_sum_to_one_with_norm_topk():
    logits = [2.0, 1.0, 0.0, -1.0]
    total = sum(math.exp(v) for v in logits)                     # 11.4752...
    p0, p1 = math.exp(2.0) / total, math.exp(1.0) / total        # 0.6439..., 0.2369...: experts 0 and 1 win
    moe, x = router_with_logits(logits, top_k=2)                 # default: OLMoE's (no renormalisation)
    experts, weights, probs, _ = moe.route(x)
    assert experts.tolist() == [[0, 1]] * 3
    torch.testing.assert_close(weights, torch.tensor([[p0, p1]] * 3, dtype=torch.float64))
    assert weights.sum(-1).max().item() == pytest.approx(0.8808, abs=1e-4)
    moe, x = router_with_logits(logits, top_k=2, norm_topk=True)  # Mixtral's
    _, weights, _, _ = moe.route(x)
    torch.testing.assert_close(weights, torch.tensor([[p0 / (p0 + p1), p1 / (p0 + p1)]] * 3, dtype=torch.float64))
    moe, x = router_with_logits(logits, top_k=1, norm_topk=True)  # k = 1 renormalised: always weight 1
    assert moe.route(x)[1].eq(1.0).all()


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_z_loss_at_st_moe_and_megablocks_scale(top_k):
    logits = [2.0, 1.0, 0.0, -1.0]
    lse_squared = math.log(sum(math.exp(v) for v in logits)) ** 2   # the same for every token
    moe, x = router_with_logits(logits, top_k=top_k)
    assert moe.z_loss_scaling == 'st-moe'
    assert moe.z_loss(moe.route(x)[3]).item() == pytest.approx(lse_squared, rel=1e-12)
    moe, x = router_with_logits(logits, top_k=top_k, z_loss_scaling='megablocks')
    # megablocks: Σ_tokens logsumexp² / (tokens · top_k)
    assert moe.z_loss(moe.route(x)[3]).item() == pytest.approx(3 * lse_squared / (3 * top_k), rel=1e-12)


def test_zero_weights_leave_the_objective_pure_cross_entropy_as_the_official_trainer_does():
    model = GPT(moe_config(aux_loss_weight=0.0, z_loss_weight=0.0), verbose=False)
    idx = torch.randint(0, 32, (2, 16))
    _, _, aux = model(idx, idx, return_aux=True)
    assert aux['aux_total'].item() == 0.0 and aux['balance_loss'] > 0 and aux['z_loss'] > 0   # still logged


def test_balance_loss_is_one_for_perfectly_uniform_routing():
    moe = MoE(moe_config(n_expert=4, top_k=1))
    with torch.no_grad():
        moe.router.weight.zero_()       # every router probability is exactly 1/E
    _, (balance, z_loss, load) = moe(torch.randn(2, 8, 48))
    assert balance.item() == pytest.approx(1.0, abs=1e-6)
    assert z_loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item() ** 2, rel=1e-6)


def test_balance_and_z_loss_match_their_formulas():
    torch.manual_seed(1)
    moe = MoE(moe_config(n_expert=4, top_k=2))
    x = torch.randn(3, 7, 48)
    _, (balance, z_loss, load) = moe(x)
    logits = x.reshape(-1, 48) @ moe.router.weight.t()
    probs = logits.softmax(-1)
    chosen = probs.topk(2).indices.reshape(-1)
    fraction = torch.bincount(chosen, minlength=4).float() / chosen.numel()
    torch.testing.assert_close(load, fraction)
    torch.testing.assert_close(balance, 4 * (fraction * probs.mean(0)).sum())
    torch.testing.assert_close(z_loss, torch.logsumexp(logits, -1).pow(2).mean())


def test_router_receives_gradients_from_the_loss_and_the_aux_terms():
    model = GPT(moe_config(), verbose=False)
    idx = torch.randint(0, 32, (2, 16))
    _, loss, aux = model(idx, idx, return_aux=True)
    assert aux['balance_loss'] > 0 and aux['z_loss'] > 0 and aux['expert_load'].shape == (2, 4)
    (loss + aux['aux_total']).backward()
    for block in model.transformer.h:
        assert block.mlp.router.weight.grad.abs().sum() > 0


def test_reported_loss_is_pure_cross_entropy():
    model = GPT(moe_config(), verbose=False)
    idx = torch.randint(0, 32, (2, 16))
    logits, loss, aux = model(idx, idx, return_aux=True)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 32), idx.reshape(-1)))
    expected_total = 0.01 * aux['balance_loss'] + 0.001 * aux['z_loss']
    torch.testing.assert_close(aux['aux_total'], expected_total)


def test_active_parameters_count_k_of_e_experts():
    cfg = moe_config(n_expert=8, top_k=2, n_layer=2, moe_every=2)
    model = GPT(cfg, verbose=False)
    moe_layers = [b for b in model.transformer.h if isinstance(b.mlp, MoE)]
    assert len(moe_layers) == 1                                 # moe_every=2: only the second block
    expert = moe_layers[0].mlp.w_fc.numel() + moe_layers[0].mlp.w_proj.numel()
    assert model.num_params() - model.num_active_params() == expert * 6 // 8


def test_per_expert_coefficients_are_one_flag_away():
    model = GPT(moe_config(per_expert_poly=True), verbose=False)
    assert len(model.transformer.h[0].mlp.acts) == 4
    idx = torch.randint(0, 32, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    assert model.transformer.h[0].mlp.acts[0].weight.grad is not None


def train_steps(model, steps=8, lr=3e-3):
    torch.manual_seed(0)
    idx = torch.randint(0, 32, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        _, loss, aux = model(idx, idx.roll(-1, 1), return_aux=True)
        (loss + aux['aux_total']).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_tiny_polynorm_moe_trains_eagerly():
    losses = train_steps(GPT(moe_config(), verbose=False))
    assert losses[-1] < losses[0] - 0.1, losses


def test_tiny_polynorm_moe_trains_compiled_without_graph_breaks():
    torch._dynamo.reset()
    model = GPT(moe_config(), verbose=False)
    compiled = torch.compile(model, fullgraph=True)
    losses = train_steps(compiled)
    assert losses[-1] < losses[0] - 0.1, losses


def expert_weight_count(n_embd, activation, expert_hidden=0):
    cfg = GPTConfig(n_embd=n_embd, n_head=1, arch='gpt2', activation=activation, n_expert=4, top_k=2,
                    expert_hidden=expert_hidden)
    with torch.device('meta'):
        moe = MoE(cfg)
    return sum(p.numel() for p in (moe.w_fc, moe.w_gate, moe.w_proj) if p is not None), moe.hidden


@pytest.mark.parametrize("n_embd", [64, 128, 200, 256, 768, 1000, 2048])
def test_auto_expert_widths_follow_the_dense_rule_and_match_exactly(n_embd):
    swiglu, gated_width = expert_weight_count(n_embd, 'swiglu')
    polynorm, width = expert_weight_count(n_embd, 'polynorm')
    assert swiglu == polynorm and gated_width == ffn_hidden_size(n_embd, 'swiglu') and width == gated_width * 3 // 2


def test_olmoe_expert_widths_1536_and_1024_hold_the_same_weights():
    assert expert_weight_count(2048, 'swiglu', 1536) == (4 * 3 * 2048 * 1024, 1024)
    assert expert_weight_count(2048, 'polynorm', 1536) == (4 * 2 * 2048 * 1536, 1536)


def paper_moe_preset(vocab_size, **overrides):
    values = read_config_file(os.path.join(REPO, 'config', 'paper_moe.py'))
    known = {f.name for f in fields(GPTConfig)}
    settings = {k: v for k, v in values.items() if k in known}
    settings.update(vocab_size=vocab_size, **overrides)
    return GPTConfig(**settings)


@pytest.mark.parametrize("activation", ["polynorm", "swiglu"])
def test_paper_moe_preset_has_olmoes_choices_and_a_hand_counted_size(activation):
    cfg = paper_moe_preset(65, activation=activation)
    assert (cfg.n_expert, cfg.top_k, cfg.norm_topk, cfg.qk_norm, cfg.tie_weights, cfg.norm_eps) == \
        (64, 8, False, True, False, 1e-5)
    assert (cfg.init_std, cfg.init_residual_scale, cfg.init_cutoff, cfg.z_loss_scaling) == \
        (0.02, False, 3.0, 'megablocks')
    model = GPT(cfg, verbose=False)
    V, d, L, E, k = 65, 128, 4, 64, 8
    expert = 2 * d * 96 if activation == 'polynorm' else 3 * d * 64         # OLMoE's 0.75 d vs 0.5 d
    shared_poly = 4 if activation == 'polynorm' else 0                       # one PolyNorm per layer, all experts
    per_layer = 4 * d * d + 4 * d + d * E + E * expert + shared_poly         # attention, 4 norm gains, router, experts
    assert model.num_params() == 2 * V * d + L * per_layer + d
    assert model.num_params() - model.num_active_params() == L * (E - k) * expert
    weights = model.transformer.h[0].mlp.w_fc
    assert weights.abs().max().item() <= 3 * 0.02                              # truncated at 3 sigma


def test_paper_moe_preset_trains_with_train_py(tmp_path):
    data_dir = make_char_dataset(tmp_path / 'data')
    run_script(['train.py', 'config/paper_moe.py', f'--dataset={data_dir}', f'--out_dir={tmp_path / "out"}',
                '--max_iters=3', '--batch_size=2', '--block_size=32', '--eval_iters=1', '--eval_interval=3',
                '--log_interval=1', '--warmup_iters=1', '--check_learned=False'])
    rows = [r for r in read_log(tmp_path / 'out') if r['train_loss']]
    assert len(rows) == 3 and all(math.isfinite(float(r['train_loss'])) and float(r['z_loss']) > 0 for r in rows)
    args = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['model_args']
    assert (args['n_expert'], args['top_k'], args['qk_norm'], args['norm_topk']) == (64, 8, True, False)


@pytest.mark.parametrize("overrides, message", [
    (dict(z_loss_scaling='mean'), "z_loss_scaling"),
    (dict(z_loss_weight=-0.001), "z_loss_weight"),
    (dict(expert_hidden=-1), "expert_hidden"),
    (dict(n_expert=4, top_k=5), "cannot exceed n_expert"),
    (dict(n_expert=4, top_k=0), "top_k must be >= 1"),
    (dict(n_expert=1, top_k=2), "cannot exceed n_expert"),
    (dict(n_expert=-1), "n_expert must be >= 0"),
    (dict(moe_every=0), "moe_every"),
])
def test_bad_moe_settings_raise_value_error_with_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        moe_config(**overrides)


# ---- the fast paths against the per-token loop: grouped matmul (fp32, bf16), compiled, per-expert coefficients

def random_moe(dtype=torch.float32, **overrides):
    torch.manual_seed(0)
    moe = MoE(moe_config(**overrides)).to(dtype)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else None
    return moe


def moe_value_and_grads(fn, moe, x, upstream):
    moe.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    y.backward(upstream)
    return [y.detach(), x.grad] + [p.grad for p in moe.parameters()]


def loop_reference(moe, x, upstream):
    """The per-token loop in float64 on a float64 copy of moe."""
    moe64 = copy.deepcopy(moe).double()
    return moe_value_and_grads(lambda t: naive_moe(moe64, t), moe64, x.double(), upstream.double())


def record_grouped_mm_calls(monkeypatch):
    """Wrap torch's grouped matmul; returns the list of the row counts of its first operand, one per call."""
    real, rows = model._torch_grouped_mm(), []

    def recording(a, b, offs):
        rows.append(a.shape[0])
        return real(a, b, offs=offs)

    monkeypatch.setattr(model, '_torch_grouped_mm', lambda: recording)
    return rows


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_grouped_matmul_path_equals_the_per_token_loop_outputs_and_gradients(dtype, tolerance, monkeypatch):
    """fp32 runs the grouped matmul on float32 tensors; bf16 autocast runs it on bf16 ones (the experts' compute dtype);
    both against the float64 loop. Tolerance relative to each tensor's largest entry."""
    rows = record_grouped_mm_calls(monkeypatch)
    moe = random_moe()
    x, upstream = torch.randn(2, 7, 48), torch.randn(2, 7, 48)

    def forward(t):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            return moe(t)[0]

    ours = moe_value_and_grads(forward, moe, x, upstream)
    assert 2 * 7 * 2 in rows                                      # the grouped path ran on the 28 (token, expert) rows
    for name, a, b in zip(['y', 'x', *dict(moe.named_parameters())], ours, loop_reference(moe, x, upstream)):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=0, atol=tolerance * scale, msg=f"{name} differs")


def test_compiled_moe_equals_the_per_token_loop_outputs_and_gradients():
    torch._dynamo.reset()
    moe = random_moe()
    compiled = torch.compile(moe, fullgraph=True, backend='aot_eager')
    x, upstream = torch.randn(2, 7, 48), torch.randn(2, 7, 48)
    ours = moe_value_and_grads(lambda t: compiled(t)[0], moe, x, upstream)
    for name, a, b in zip(['y', 'x', *dict(moe.named_parameters())], ours, loop_reference(moe, x, upstream)):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5 * b.abs().max().item(), msg=f"{name} differs")


@pytest.mark.parametrize("activation", ["polynorm", "polyrelu"])
def test_per_expert_coefficients_equal_a_loop_with_each_experts_own_coefficients(activation):
    moe = random_moe(torch.float64, activation=activation, per_expert_poly=True)
    with torch.no_grad():
        for e, act in enumerate(moe.acts):                        # every expert its own, different polynomial
            act.weight.copy_(torch.linspace(-1, 1, act.order, dtype=torch.float64) * (e + 1))
            act.bias.fill_(0.1 * e)
    x = torch.randn(2, 5, 48, dtype=torch.float64)
    upstream = torch.randn_like(x)
    ours = moe_value_and_grads(lambda t: moe(t)[0], moe, x, upstream)
    ref = moe_value_and_grads(lambda t: naive_moe(moe, t), moe, x, upstream)
    for name, a, b in zip(['y', 'x', *dict(moe.named_parameters())], ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"{name} differs")
    assert all(moe.acts[e].weight.grad.abs().sum() > 0 for e in range(4) if e in moe.route(x.reshape(-1, 48))[0])


def test_balance_loss_with_non_uniform_router_probabilities_has_its_hand_computed_value():
    """Two kinds of token: two with router logits (2, 1, 0, -1), one with (0, 0, 3, 0); top-1 sends them to experts 0
    and 2. Switch loss E Σ_i f_i P_i with f = (2/3, 0, 1/3, 0) and P the mean router probabilities."""
    moe = MoE(moe_config(n_expert=4, top_k=1)).double()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, 0] = torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64)
        moe.router.weight[:, 1] = torch.tensor([0.0, 0.0, 3.0, 0.0], dtype=torch.float64)
    x = torch.zeros(1, 3, 48, dtype=torch.float64)
    x[0, 0, 0] = x[0, 1, 0] = x[0, 2, 1] = 1.0
    _, (balance, _, load) = moe(x)
    a = [math.exp(v) for v in (2.0, 1.0, 0.0, -1.0)]
    b = [math.exp(v) for v in (0.0, 0.0, 3.0, 0.0)]
    p_a, p_b = [v / sum(a) for v in a], [v / sum(b) for v in b]
    mean_p = [(2 * pa + pb) / 3 for pa, pb in zip(p_a, p_b)]
    expected = 4 * (2 / 3 * mean_p[0] + 1 / 3 * mean_p[2])        # = 1.64739...
    assert load.tolist() == pytest.approx([2 / 3, 0, 1 / 3, 0])
    assert balance.item() == pytest.approx(expected, rel=1e-6)    # the load fractions are fp32
    assert abs(expected - 1.0) > 0.5                             # far from the uniform value 1


# ---- torch 2.11 compatibility: torch._grouped_mm where F.grouped_mm is missing, the loop where neither runs

def grouped_product_and_grads(a, b, offsets, upstream):
    a, b = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    y = grouped_matmul(a, b, offsets)
    return [y.detach(), *torch.autograd.grad(y, [a, b], upstream)]


def grouped_problem():
    torch.manual_seed(0)
    offsets = torch.tensor([5, 5, 12, 16], dtype=torch.int32)      # an expert with no tokens included
    return torch.randn(16, 32), torch.randn(4, 32, 24), offsets, torch.randn(16, 24)


def test_without_f_grouped_mm_torch_private_grouped_mm_gives_the_same_numbers(monkeypatch):
    """torch 2.8 and 2.9 have only torch._grouped_mm (same arguments): it must be found and used."""
    problem = grouped_problem()
    normal = grouped_product_and_grads(*problem)
    calls = []
    real = torch._grouped_mm
    monkeypatch.delattr(F, 'grouped_mm')
    monkeypatch.setattr(torch, '_grouped_mm', lambda *args, **kw: calls.append(1) or real(*args, **kw))
    assert model._torch_grouped_mm() is torch._grouped_mm
    hidden = grouped_product_and_grads(*problem)
    assert len(calls) >= 3                                          # forward, dA and dB all took it
    for a, b in zip(normal, hidden):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("how", ["absent", "raises"])
def test_where_no_grouped_mm_runs_the_per_expert_loop_gives_the_same_numbers(how, monkeypatch):
    """Neither function (torch < 2.8), or one that raises on this device (torch 2.8 on CPU): the loop, no crash."""
    problem = grouped_problem()
    normal = grouped_product_and_grads(*problem)
    if how == 'absent':
        monkeypatch.delattr(F, 'grouped_mm')
        monkeypatch.delattr(torch, '_grouped_mm')
        assert model._torch_grouped_mm() is None
    else:
        def unsupported(*args, **kwargs):
            raise NotImplementedError("no CPU kernel for grouped_mm")
        monkeypatch.setattr(F, 'grouped_mm', unsupported)
    fallback = grouped_product_and_grads(*problem)
    for a, b in zip(normal, fallback):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert fallback[2][1].abs().sum() == 0                         # the empty expert's gradient


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gather_rows_gradient_is_indexings_own_gathered_back_through_the_inverse_permutation(k):
    # the MoE's dispatch (index = order // k) and combine (index = a permutation): the same values as x[index] and,
    # in float64, the same gradient as indexing's own backward (a scatter with accumulation)
    torch.manual_seed(k)
    N, C = 7, 5
    order = torch.randint(0, 4, (N * k,)).argsort(stable=True)        # pairs sorted by a random expert id
    back = torch.empty_like(order).scatter_(0, order, torch.arange(N * k))
    index = order // k
    x = torch.randn(N, C, dtype=torch.float64, requires_grad=True)
    g = torch.randn(N * k, C, dtype=torch.float64)
    (plain_grad,) = torch.autograd.grad(x[index], x, g)
    out = model.gather_rows(x, index, back)
    (fast_grad,) = torch.autograd.grad(out, x, g)
    assert torch.equal(out, x[index])
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: model.gather_rows(t, index, back), (x,))
    y = torch.randn(N * k, C, dtype=torch.float64, requires_grad=True)   # combine: a permutation, its inverse back
    assert torch.autograd.gradcheck(lambda t: model.gather_rows(t, back, order), (y,))


def test_the_moe_routes_the_same_tokens_to_the_same_experts_as_the_per_token_loop():
    torch.manual_seed(3)
    moe = MoE(moe_config(n_expert=8, top_k=2)).double()
    x = torch.randn(2, 16, 48, dtype=torch.float64)
    top_expert = moe.route(x.reshape(-1, 48))[0]
    for token, chosen in zip(x.reshape(-1, 48), top_expert):
        probs = F.softmax(token @ moe.router.weight.t(), dim=-1)
        assert chosen.tolist() == probs.topk(2).indices.tolist()
