"""The MoE FFN: top-k routing, dropless grouped experts, Switch load balancing and router z-loss."""

import pytest
import torch
import torch.nn.functional as F

from model import GPT, MLP, GPTConfig, grouped_matmul, MoE


def moe_config(**overrides):
    settings = dict(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=48, activation='polynorm',
                    n_expert=4, top_k=2, expert_hidden=64)
    settings.update(overrides)
    return GPTConfig(**settings)


def naive_moe(moe, x):
    """One token at a time: softmax over all experts, top-k, renormalise, sum the chosen experts' FFN outputs."""
    B, T, C = x.shape
    out = []
    for token in x.reshape(-1, C):
        probs = F.softmax(token @ moe.router.weight.t(), dim=-1)
        weights, experts = probs.topk(moe.top_k)
        weights = weights / weights.sum()
        y = torch.zeros_like(token)
        for w, e in zip(weights, experts):
            h = token @ moe.w_fc[e]
            h = moe.act(token @ moe.w_gate[e]) * h if moe.gated else moe.act(h.unsqueeze(0)).squeeze(0)
            y = y + w * (h @ moe.w_proj[e])
        out.append(y)
    return torch.stack(out).reshape(B, T, C)


@pytest.mark.parametrize("activation", ["polynorm", "swiglu", "gelu"])
def test_moe_output_and_gradients_equal_a_per_token_loop_in_float64(activation):
    torch.manual_seed(0)
    moe = MoE(moe_config(activation=activation)).double()
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


@pytest.mark.parametrize("overrides, message", [
    (dict(n_expert=4, top_k=5), "cannot exceed n_expert"),
    (dict(n_expert=4, top_k=0), "top_k must be >= 1"),
    (dict(n_expert=1, top_k=2), "cannot exceed n_expert"),
    (dict(n_expert=-1), "n_expert must be >= 0"),
    (dict(moe_every=0), "moe_every"),
])
def test_bad_moe_settings_raise_value_error_with_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        moe_config(**overrides)
