"""model.py: the PolyCom activations are exactly the paper's, the FFNs are parameter-matched by the paper's width rule,
every activation trains and compiles, the knobs where the paper's models differ from our defaults work, the paper
presets build and train, and bad arguments fail with a clear ValueError."""

import math
import os
import sys
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from configurator import read_config_file
from model import (ACTIVATIONS, GPT, MLP, GPTConfig, LayerNorm, PolyBaseFunction, PolyCom, PolyNorm, PolyNormFunction,
                   PolyPReLU, PolyReLU, PolyReLUNorm, RMSNorm, apply_rope, build_activation, ffn_hidden_size, poly_norm,
                   poly_of_base, rope_tables, upgrade_model_args)

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import REPO, make_char_dataset, read_log, run_script  # noqa: E402


def tiny_config(**overrides):
    settings = dict(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=48, dropout=0.0)
    settings.update(overrides)
    return GPTConfig(**settings)


# ---- the reference formulas are model.py's plain code (poly_of_base, poly_norm, PolyCom.formula); the fast paths
# (the closed-form autograd Functions) must reproduce them, and the formulas must be the paper's (checked by hand below)

def reference_polyrelu(x, weight, bias):
    return poly_of_base(x, weight, bias, torch.relu)


def reference_polynorm(x, weight, bias, eps=1e-6):
    return poly_norm(x, weight, bias, eps)


def test_plain_formulas_are_the_official_codes_written_out_at_order_3():
    """The official code spells r = 3 out term by term: w0 N(x³) + w1 N(x²) + w2 N(x) + b, relu likewise."""
    x, weight, bias, _ = random_problem(3)

    def norm(u):
        return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6)

    expected_norm = weight[0] * norm(x ** 3) + weight[1] * norm(x ** 2) + weight[2] * norm(x) + bias
    torch.testing.assert_close(reference_polynorm(x, weight, bias), expected_norm, rtol=1e-12, atol=1e-12)
    relu = torch.relu(x)
    expected_relu = weight[0] * relu ** 3 + weight[1] * relu ** 2 + weight[2] * relu + bias
    torch.testing.assert_close(reference_polyrelu(x, weight, bias), expected_relu, rtol=1e-12, atol=1e-12)


def random_problem(order, shape=(3, 5, 24), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    weight = torch.randn(order, generator=g, dtype=torch.float64)
    bias = torch.randn(1, generator=g, dtype=torch.float64)
    upstream = torch.randn(shape, generator=g, dtype=torch.float64)
    return x, weight, bias, upstream


def value_and_grads(fn, x, weight, bias, upstream):
    x, weight, bias = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
    y = fn(x, weight, bias)
    y.backward(upstream)
    return y.detach(), x.grad, weight.grad, bias.grad


@pytest.mark.parametrize("order", range(1, 9))
def test_polyrelu_forward_and_backward_equal_reference(order):
    x, weight, bias, upstream = random_problem(order)
    ours = value_and_grads(lambda x, w, b: PolyBaseFunction.apply(x, w, b, 'relu'), x, weight, bias, upstream)
    ref = value_and_grads(reference_polyrelu, x, weight, bias, upstream)
    for a, b, what in zip(ours, ref, ("y", "dx", "dweight", "dbias")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"PolyReLU r={order}: {what} differs")


@pytest.mark.parametrize("order", range(1, 9))
def test_polynorm_forward_and_backward_equal_reference(order):
    x, weight, bias, upstream = random_problem(order)
    ours = value_and_grads(lambda x, w, b: PolyNormFunction.apply(x, w, b, 1e-6), x, weight, bias, upstream)
    ref = value_and_grads(reference_polynorm, x, weight, bias, upstream)
    for a, b, what in zip(ours, ref, ("y", "dx", "dweight", "dbias")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"PolyNorm r={order}: {what} differs")


@pytest.mark.parametrize("base", ["gelu", "silu"])
def test_type_one_polycom_with_smooth_bases_equals_reference(base):
    x, weight, bias, upstream = random_problem(3)
    rho = {'gelu': F.gelu, 'silu': F.silu}[base]

    def reference(x, w, b):
        return b + sum(w[3 - i] * rho(x) ** i for i in range(1, 4))

    ours = value_and_grads(lambda x, w, b: PolyBaseFunction.apply(x, w, b, base), x, weight, bias, upstream)
    ref = value_and_grads(reference, x, weight, bias, upstream)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fn", [
    lambda x, w, b: PolyNormFunction.apply(x, w, b, 1e-6),
    lambda x, w, b: PolyBaseFunction.apply(x, w, b, 'relu'),
    lambda x, w, b: PolyBaseFunction.apply(x, w, b, 'gelu'),
    lambda x, w, b: PolyBaseFunction.apply(x, w, b, 'silu'),
], ids=["polynorm", "polyrelu", "polygelu", "polysilu"])
def test_gradcheck_of_closed_form_backward(fn):
    x, weight, bias, _ = random_problem(3, shape=(4, 6))
    inputs = tuple(t.requires_grad_(True) for t in (x, weight, bias))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [PolyReLU, PolyNorm])
@pytest.mark.parametrize("order", [1, 3, 5])
def test_default_init_is_one_over_r_and_zero_bias(cls, order):
    act = cls(order)
    assert act.weight.shape == (order,) and act.bias.shape == (1,)
    torch.testing.assert_close(act.weight.data, torch.full((order,), 1.0 / order))
    assert act.bias.item() == 0.0
    assert cls().order == 3


def test_polynorm_eps_is_inside_the_sqrt_and_defaults_to_1e6():
    assert PolyNorm().eps == 1e-6
    act = PolyNorm(1)
    act.weight.data.fill_(1.0)
    x = torch.full((1, 4), 1e-4, dtype=torch.float64)
    # eps inside the sqrt: 1e-4 / sqrt(1e-8 + 1e-6); outside it would be 1e-4 / (1e-4 + 1e-6)
    expected = 1e-4 / (1e-8 + 1e-6) ** 0.5
    torch.testing.assert_close(act(x), torch.full_like(x, expected))


def test_weight_element_zero_multiplies_the_highest_power():
    x = torch.randn(2, 16, dtype=torch.float64)
    relu, norm = PolyReLU(3).double(), PolyNorm(3).double()
    for act in (relu, norm):
        act.weight.data = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(relu(x), torch.relu(x) ** 3)
    cube = x ** 3
    torch.testing.assert_close(norm(x), cube / torch.sqrt(cube.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_official_checkpoint_coefficients_load_as_they_are():
    official = {'weight': torch.tensor([0.5, 0.25, 0.125]), 'bias': torch.tensor([0.1])}
    act = PolyNorm()
    act.load_state_dict(official)
    x = torch.randn(4, 32, dtype=torch.float64)
    torch.testing.assert_close(act.double()(x), reference_polynorm(x, official['weight'].double(),
                                                                   official['bias'].double()))


def test_relu_and_relu_squared_are_special_cases_of_polyrelu():
    x = torch.randn(64)
    act = PolyReLU(2)
    act.weight.data = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(act(x), torch.relu(x))
    act.weight.data = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(act(x), torch.relu(x) ** 2)


def bf16_problem(seed, scale=8.0):
    torch.manual_seed(seed)
    return (torch.randn(8, 64) * scale).to(torch.bfloat16)    # x^6 of such values has no useful bf16 precision


@pytest.mark.parametrize("seed", range(5))
def test_bf16_autocast_output_is_the_float64_formula_rounded_to_bf16(seed):
    """Powers and norms are computed in fp32 and only the final cast rounds: every element equals the float64 formula
    rounded to bf16 (measured: 0 of 10,240 differ over 20 seeds). The negative control, the same formula in bf16
    arithmetic, misses it in about half of the elements (5,819 of 10,240), so this test can tell the two apart."""
    x, act = bf16_problem(seed), PolyNorm()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = act(x)
    assert y.dtype == torch.bfloat16
    expected = reference_polynorm(x.double(), act.weight.double(), act.bias.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-2, atol=1e-2)   # only the final cast rounds to bf16
    assert torch.equal(y, expected.to(torch.bfloat16))
    all_bf16 = reference_polynorm(x, act.weight.to(torch.bfloat16), act.bias.to(torch.bfloat16))
    assert (all_bf16 != expected.to(torch.bfloat16)).float().mean() > 0.2


def bf16_ulp(t):
    """The spacing of bf16 numbers at |t| (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(t.abs().clamp(min=1e-30))) - 7)


@pytest.mark.parametrize("cls", [PolyReLU, PolyPReLU, PolyReLUNorm])
def test_bf16_autocast_other_polycoms_are_within_one_rounding_of_the_float64_formula(cls):
    """fp32 arithmetic then one rounding: each element is the float64 value rounded to bf16, or (where the value sits
    within fp32 error of a rounding midpoint; measured 6 of 10,240 for PolyReLU) the bf16 neighbour on its other side.
    bf16 arithmetic misses the rounded value in many elements (measured 2,208 of 10,240: the negative control)."""
    act = cls()
    for seed in range(5):
        x = bf16_problem(seed, scale=2.0)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = act(x)
        expected = act.double().formula(x.double())
        act.float()
        assert (y.double() - expected).abs().le(bf16_ulp(expected) * 0.5 * 1.001 + 1e-30).float().mean() > 0.995
        assert (y.double() - expected).abs().le(bf16_ulp(expected) * 1.001).all()
        all_bf16 = act.to(torch.bfloat16).formula(x).double()
        act.float()
        assert (all_bf16 - expected).abs().gt(bf16_ulp(expected) * 0.5 * 1.001).float().mean() > 0.05


# ---- memory: bytes saved for backward

def saved_bytes_of_ffn(activation, n_embd=64, tokens=(4, 32), unique=False):
    """Bytes the FFN saves for backward: every saved tensor counted (unique=False, the strict count), or each storage
    once (unique=True, the memory actually held: relu's output and the PolyNorm that follows save the same tensor)."""
    torch.manual_seed(0)
    mlp = MLP(tiny_config(activation=activation, n_embd=n_embd))
    x = torch.randn(*tokens, n_embd, requires_grad=True)
    total, seen = 0, set()

    def pack(t):
        nonlocal total
        if not (unique and t.untyped_storage().data_ptr() in seen):
            total += t.numel() * t.element_size()
        seen.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x).sum().backward()
    return total


@pytest.mark.parametrize("activation", ["polynorm", "polyrelu", "polygelu", "polyprelu"])
def test_polycom_ffn_saves_no_more_than_gelu_ffn(activation):
    ratio = saved_bytes_of_ffn(activation) / saved_bytes_of_ffn("gelu")
    assert ratio <= 1.01, f"{activation} FFN saves {ratio:.3f}x the bytes of the GELU FFN"


def test_polyrelunorm_ffn_holds_no_more_than_gelu_ffn_and_gated_polynorm_no_more_than_swiglu():
    ratio = saved_bytes_of_ffn("polyrelunorm", unique=True) / saved_bytes_of_ffn("gelu", unique=True)
    assert ratio <= 1.01, f"polyrelunorm FFN holds {ratio:.3f}x the bytes of the GELU FFN"
    ratio = saved_bytes_of_ffn("polynorm_glu") / saved_bytes_of_ffn("swiglu")
    assert ratio <= 1.01, f"polynorm_glu FFN saves {ratio:.3f}x the bytes of the SwiGLU FFN"


def test_plain_formula_path_holds_much_more_even_counted_by_storage(monkeypatch):
    """The storage-counted measure can fail too: PolyCom.formula in plain autograd (fast = False) holds its powers."""
    gelu = saved_bytes_of_ffn("gelu", unique=True)
    monkeypatch.setattr(PolyCom, 'fast', False)
    for activation in ("polyrelunorm", "polyprelu", "polynorm"):
        assert saved_bytes_of_ffn(activation, unique=True) > 2 * gelu, activation


def test_plain_autograd_polynorm_would_save_much_more():
    """The saved-bytes counter can fail: plain autograd PolyNorm keeps powers and norms (the memory we avoid)."""
    class PlainPolyNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = torch.nn.Parameter(torch.full((3,), 1 / 3)), torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return reference_polynorm(x, self.weight, self.bias)

    torch.manual_seed(0)
    mlp = MLP(tiny_config(activation='gelu', n_embd=64))
    mlp.act = PlainPolyNorm()
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(torch.randn(4, 32, 64, requires_grad=True)).sum().backward()
    assert total > 2 * saved_bytes_of_ffn("gelu")


# ---- parameter matching and model behaviour

def test_auto_ffn_widths_are_the_papers_5504_and_8256_at_d_2048():
    assert ffn_hidden_size(2048, 'swiglu') == 5504            # 2/3 * 8192 = 5461.3, rounded UP to a multiple of 64
    assert ffn_hidden_size(2048, 'polynorm') == ffn_hidden_size(2048, 'gelu') == 8256   # 1.5 x 5504
    assert ffn_hidden_size(768, 'swiglu') == 2048 and ffn_hidden_size(768, 'gelu') == 3072


def test_an_explicit_ffn_hidden_wins_and_gated_ffns_get_two_thirds_of_it():
    assert ffn_hidden_size(2048, 'swiglu', 8256) == 5504 and ffn_hidden_size(2048, 'polynorm', 8256) == 8256
    # the default comparison (config/compare_shakespeare_char.py): 576 and 384, 147,456 FFN weights each
    assert ffn_hidden_size(128, 'polynorm', 576) == 576 and ffn_hidden_size(128, 'swiglu', 576) == 384
    assert ffn_hidden_size(128, 'gelu', 512) == 512 and ffn_hidden_size(128, 'swiglu', 512) == 320


def ffn_matrix_and_scalar_counts(n_embd, activation, ffn_hidden=0):
    """(weights in the FFN's matrices, all FFN parameters) of a dense FFN, built on the meta device (no memory)."""
    cfg = GPTConfig(n_embd=n_embd, n_head=1, arch='gpt2', activation=activation, ffn_hidden=ffn_hidden)
    with torch.device('meta'):
        mlp = MLP(cfg)
    return sum(p.numel() for p in mlp.parameters() if p.dim() == 2), sum(p.numel() for p in mlp.parameters())


@pytest.mark.parametrize("n_embd", list(range(64, 2049, 64)) + [24, 100, 130, 200, 333, 1000, 1500, 2047])
def test_auto_widths_give_swiglu_exactly_the_ffn_weights_of_every_other_activation(n_embd):
    swiglu, _ = ffn_matrix_and_scalar_counts(n_embd, 'swiglu')
    for activation in ('gelu', 'polyrelu', 'polynorm'):
        matrices, total = ffn_matrix_and_scalar_counts(n_embd, activation)
        assert matrices == swiglu, (n_embd, activation)
        assert total - swiglu <= 4 and abs(total / swiglu - 1) < 0.01     # PolyCom adds its r + 1 = 4 scalars
    assert ffn_hidden_size(n_embd, 'swiglu') % 64 == 0


def test_non_ffn_initialization_is_identical_across_activations():
    a = GPT(tiny_config(activation='gelu'), verbose=False).state_dict()
    b = GPT(tiny_config(activation='polynorm'), verbose=False).state_dict()
    shared = [k for k in a if k in b and '.mlp.' not in k]
    assert len(shared) > 5
    for k in shared:
        assert torch.equal(a[k], b[k]), k


def test_init_seed_changes_the_weights():
    a = GPT(tiny_config(init_seed=1), verbose=False).state_dict()['transformer.wte.weight']
    b = GPT(tiny_config(init_seed=2), verbose=False).state_dict()['transformer.wte.weight']
    assert not torch.equal(a, b)


def train_a_few_steps(model, steps=8, lr=3e-3):
    torch.manual_seed(0)
    idx = torch.randint(0, model.config.vocab_size, (4, model.config.block_size))
    opt = model.configure_optimizers(0.1, lr, (0.9, 0.95), 'cpu')
    losses = []
    for _ in range(steps):
        _, loss, aux = model(idx, idx.roll(-1, dims=1), return_aux=True)
        (loss + aux['aux_total']).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_trains_with_decreasing_loss(activation):
    losses = train_a_few_steps(GPT(tiny_config(activation=activation), verbose=False))
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("arch", ["modern", "gpt2"])
def test_both_architectures_train(arch):
    losses = train_a_few_steps(GPT(tiny_config(arch=arch, activation='polynorm', tie_weights=False), verbose=False))
    assert losses[-1] < losses[0] - 0.1, losses


def test_logits_and_loss_conventions():
    model = GPT(tiny_config(), verbose=False)
    idx = torch.randint(0, 32, (3, 16))
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 32) and loss is None
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 32)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 32), idx.reshape(-1)))
    assert model.lm_head.weight is model.transformer.wte.weight


def test_generate_returns_the_right_shape_and_greedy_is_deterministic():
    model = GPT(tiny_config(), verbose=False).eval()
    idx = torch.zeros((2, 3), dtype=torch.long)
    out = model.generate(idx, max_new_tokens=20, temperature=0.8, top_k=5)   # runs past block_size 16: crops
    assert out.shape == (2, 23) and out.dtype == torch.long and int(out.max()) < 32
    assert torch.equal(model.generate(idx, 5, temperature=0), model.generate(idx, 5, temperature=0))


def test_optimizer_does_not_decay_polycom_coefficients_or_norms():
    model = GPT(tiny_config(activation='polynorm'), verbose=False)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    no_decay = {id(p) for g in opt.param_groups if g['weight_decay'] == 0.0 for p in g['params']}
    for name, p in model.named_parameters():
        if 'act.' in name or 'ln_' in name:
            assert id(p) in no_decay, name
        if name.endswith('c_fc.weight'):
            assert id(p) not in no_decay, name


def test_flops_per_token_follows_six_n_plus_attention():
    c = tiny_config()
    model = GPT(c, verbose=False)
    assert model.flops_per_token() == 6 * model.num_params() + 12 * c.n_layer * c.n_embd * c.block_size


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_compiles_without_graph_breaks(activation):
    """fullgraph=True raises on any graph break; aot_eager traces forward and backward (custom Functions included)
    without the minutes of C++ code generation that the inductor backend needs for each of them on CPU."""
    torch._dynamo.reset()
    model = GPT(tiny_config(activation=activation), verbose=False)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    idx = torch.randint(0, 32, (2, 16))
    logits, loss = compiled(idx, idx)
    loss.backward()
    torch.testing.assert_close(logits, model(idx, idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["polynorm", "polyrelu", "polyprelu", "polyrelunorm"])
def test_compiled_polycom_runs_the_formula_and_its_gradients_equal_eager(activation, monkeypatch):
    """Under torch.compile PolyCom runs formula(), never the closed-form Functions: inductor compiled those into wrong
    gradients on CUDA (torch 2.11, H200; right on CPU). Gradients of the compiled model equal eager's (aot_eager)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(tiny_config(activation=activation), verbose=False)
    idx = torch.randint(0, 32, (2, 16))
    model(idx, idx)[1].backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    def refuse(*args):
        raise AssertionError("a closed-form Function ran under torch.compile")
    monkeypatch.setattr(PolyNormFunction, 'forward', staticmethod(refuse))
    monkeypatch.setattr(PolyBaseFunction, 'forward', staticmethod(refuse))
    torch.compile(model, fullgraph=True, backend='aot_eager')(idx, idx)[1].backward()
    for a, b in zip(eager, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("activation", ["polynorm", "polyrelu"])
def test_inductor_compiled_and_eager_logits_agree(activation):
    """Tolerance 1e-4: inductor fuses and reorders float32 reductions, so results differ in the last bits."""
    torch._dynamo.reset()
    model = GPT(tiny_config(activation=activation), verbose=False)
    idx = torch.randint(0, 32, (2, 16))
    compiled = torch.compile(model, fullgraph=True)
    logits, loss = compiled(idx, idx)
    loss.backward()
    eager_logits, _ = model(idx, idx)
    torch.testing.assert_close(logits, eager_logits, rtol=1e-4, atol=1e-4)


# ---- the knobs around the FFN where the paper's models and our defaults differ

def test_norm_eps_defaults_to_each_archs_own_and_reaches_every_norm():
    modern, gpt2 = GPT(tiny_config(), verbose=False), GPT(tiny_config(arch='gpt2'), verbose=False)
    assert {m.eps for m in modern.modules() if isinstance(m, RMSNorm)} == {1e-6}
    assert {m.eps for m in gpt2.modules() if isinstance(m, LayerNorm)} == {1e-5}
    paper = GPT(tiny_config(norm_eps=1e-5, qk_norm=True), verbose=False)
    norms = [m for m in paper.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == 4 * 2 + 1 and {m.eps for m in norms} == {1e-5}    # ln_1, ln_2, q and k norms, ln_f
    x = torch.randn(3, 48) * 1e-3                                            # tiny rows: eps matters
    torch.testing.assert_close(norms[0](x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))


def test_qk_norm_normalises_the_whole_q_and_k_projections():
    """With QK-norm, scaling the q and k rows of the attention's input projection changes nothing (RMSNorm is
    scale-invariant up to eps); without it the attention logits, and so the output, change."""
    idx = torch.randint(0, 32, (2, 16))
    for qk_norm in (True, False):
        model = GPT(tiny_config(qk_norm=qk_norm), verbose=False)
        before, _ = model(idx, idx)
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight[:2 * 48] *= 10.0                     # rows of q and k: (2C, C) of (3C, C)
        after, _ = model(idx, idx)
        assert torch.allclose(before, after, atol=1e-5) == qk_norm
    attn = GPT(tiny_config(qk_norm=True), verbose=False).transformer.h[0].attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (48,)   # one gain over all heads (OLMoE)
    assert GPT(tiny_config(), verbose=False).transformer.h[0].attn.q_norm is None


def test_init_std_residual_scaling_and_truncation():
    def weights(**overrides):
        model = GPT(tiny_config(n_embd=256, n_head=4, n_layer=8, **overrides), verbose=False)
        return model.transformer.h[0].attn.c_attn.weight, model.transformer.h[0].attn.c_proj.weight

    c_attn, c_proj = weights()                                               # GPT-2's: 0.02, 0.02 / sqrt(16)
    assert c_attn.std().item() == pytest.approx(0.02, rel=0.02)
    assert c_proj.std().item() == pytest.approx(0.005, rel=0.02)
    c_attn, c_proj = weights(init_std=0.013975)                              # the paper's dense model
    assert c_attn.std().item() == pytest.approx(0.013975, rel=0.02)
    assert c_proj.std().item() == pytest.approx(0.013975 / 4, rel=0.02)
    c_attn, c_proj = weights(init_residual_scale=False, init_cutoff=3.0)     # OLMoE's
    assert c_proj.std().item() == pytest.approx(0.02 * 0.9866, rel=0.02)     # a normal cut at 3 sigma: std x 0.9866
    assert c_attn.abs().max().item() <= 0.06 and c_proj.abs().max().item() <= 0.06
    assert c_attn.abs().max().item() > 0.05                                   # 200k draws reach close to the cut


def test_checkpoint_model_args_without_the_new_fields_rebuild_the_old_widths_and_routing():
    old = dict(n_layer=1, n_head=2, n_embd=128, block_size=8, vocab_size=16, activation='polynorm', ffn_hidden=0,
               n_expert=0, expert_hidden=0)
    assert MLP(GPTConfig(**upgrade_model_args(old))).hidden == 512           # the 4 x n_embd rule of those checkpoints
    assert MLP(GPTConfig(**upgrade_model_args(dict(old, activation='swiglu')))).hidden == 320
    assert upgrade_model_args(old)['norm_topk'] is True and upgrade_model_args(old)['expert_hidden'] == 512
    assert upgrade_model_args(dict(old, ffn_hidden=576))['ffn_hidden'] == 576
    new = dict(old, norm_topk=False)
    assert upgrade_model_args(new) == new


def preset(name, vocab_size):
    """The GPTConfig a train.py config file builds (its model knobs over GPTConfig's defaults)."""
    values = read_config_file(os.path.join(REPO, 'config', name))
    known = {f.name for f in fields(GPTConfig)}
    return GPTConfig(vocab_size=vocab_size, **{k: v for k, v in values.items() if k in known})


@pytest.mark.parametrize("activation", ["polynorm", "swiglu"])
def test_paper_dense_preset_has_the_official_choices_and_a_hand_counted_size(activation):
    cfg = preset('paper_dense.py', vocab_size=65)
    cfg.activation = activation
    assert (cfg.tie_weights, cfg.norm_eps, cfg.qk_norm, cfg.init_std, cfg.arch, cfg.bias) == \
        (False, 1e-5, False, 0.013975, 'modern', False)
    model = GPT(cfg, verbose=False)
    V, d, L = 65, 128, 4
    ffn = 2 * d * 576 + 4 if activation == 'polynorm' else 3 * d * 384      # the paper's rule at d = 128
    per_layer = 4 * d * d + 2 * d + ffn                                      # qkv and output, two RMSNorm gains, FFN
    assert model.num_params() == 2 * V * d + L * per_layer + d               # untied: embedding and head both count
    assert model.lm_head.weight is not model.transformer.wte.weight


def test_paper_dense_preset_trains_with_train_py(tmp_path):
    data_dir = make_char_dataset(tmp_path / 'data')
    run_script(['train.py', 'config/paper_dense.py', f'--dataset={data_dir}', f'--out_dir={tmp_path / "out"}',
                '--max_iters=3', '--batch_size=2', '--block_size=32', '--eval_iters=1', '--eval_interval=3',
                '--log_interval=1', '--warmup_iters=1', '--check_learned=False'])
    rows = read_log(tmp_path / 'out')
    assert len(rows) >= 3 and all(math.isfinite(float(r['train_loss'])) for r in rows if r['train_loss'])
    args = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['model_args']
    assert (args['tie_weights'], args['norm_eps'], args['init_std']) == (False, 1e-5, 0.013975)


# ---- bad input

@pytest.mark.parametrize("overrides, message", [
    (dict(activation='tanhh'), "valid choices"),
    (dict(poly_order=0), "poly_order"),
    (dict(poly_order=9), "poly_order"),
    (dict(poly_order=2.5), "poly_order"),
    (dict(arch='llama'), "arch"),
    (dict(n_embd=50, n_head=3), "divisible"),
    (dict(dropout=1.0), "dropout"),
    (dict(ffn_hidden=-1), "ffn_hidden"),
    (dict(norm_eps=-1e-5), "norm_eps"),
    (dict(init_std=0.0), "init_std"),
    (dict(init_cutoff=-3.0), "init_cutoff"),
])
def test_bad_config_raises_value_error_naming_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_unknown_activation_error_lists_every_choice():
    with pytest.raises(ValueError) as err:
        build_activation('mish')
    assert all(name in str(err.value) for name in ACTIVATIONS)


def test_bad_polycom_order_or_base_raises():
    with pytest.raises(ValueError, match="order"):
        PolyReLU(0)
    with pytest.raises(ValueError, match="base"):
        PolyCom(3, base='tanh')


def test_sequence_longer_than_block_size_raises():
    model = GPT(tiny_config(), verbose=False)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros((1, 17), dtype=torch.long))


@pytest.mark.parametrize("order", [1, 3])
def test_row_blocked_cpu_path_equals_reference(order, monkeypatch):
    """Eager CPU runs the PolyCom passes block by block of rows (cache locality); force many small blocks."""
    import model
    monkeypatch.setattr(model, 'ROW_BLOCK_BYTES', 3 * 24 * 8)    # 3 rows of float64 per block, 15 rows in all
    x, weight, bias, upstream = random_problem(order)
    for fn, ref_fn in ((lambda x, w, b: PolyNormFunction.apply(x, w, b, 1e-6), reference_polynorm),
                       (lambda x, w, b: PolyBaseFunction.apply(x, w, b, 'relu'), reference_polyrelu)):
        ours = value_and_grads(fn, x, weight, bias, upstream)
        ref = value_and_grads(ref_fn, x, weight, bias, upstream)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ['polyrelu', 'polynorm', 'polyprelu', 'polyrelunorm'])
def test_polycom_of_no_rows_is_empty_with_zero_coefficient_gradients(name):
    """An MoE expert that gets no token calls its activation on a (0, H) tensor (per_expert_poly): with and without
    autograd, the result is empty and the coefficients' gradients are zero."""
    from model import build_activation
    act = build_activation(name, 3).double()
    x = torch.zeros(0, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        assert act(x).shape == (0, 8)
    act(x).sum().backward()
    assert x.grad.shape == (0, 8) and torch.equal(act.weight.grad, torch.zeros(3, dtype=torch.float64))


# ---- the paper's other compositions (PolyPReLU, PolyReLUNorm) and gated PolyNorm: fast path against the formula

def act_with(cls, order, weight, bias, slope=None):
    act = cls(order).double()
    with torch.no_grad():
        act.weight.copy_(weight)
        act.bias.copy_(bias)
        if slope is not None:
            act.slope.fill_(slope)
    return act


def module_value_and_grads(act, x, upstream, plain):
    """act(x) through the fast path (plain=False) or PolyCom.formula (plain=True); value and every gradient."""
    act.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = act.formula(x) if plain else act(x)
    y.backward(upstream)
    return [y.detach(), x.grad] + [p.grad for p in act.parameters()]


@pytest.mark.parametrize("cls", [PolyPReLU, PolyReLUNorm])
@pytest.mark.parametrize("order", range(1, 9))
def test_new_compositions_forward_and_backward_equal_their_formula(cls, order):
    x, weight, bias, upstream = random_problem(order)
    act = act_with(cls, order, weight, bias, slope=-0.3 if cls is PolyPReLU else None)
    ours, ref = module_value_and_grads(act, x, upstream, False), module_value_and_grads(act, x, upstream, True)
    assert len(ours) == (5 if cls is PolyPReLU else 4)                 # y, dx, dweight, dbias (, dslope)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_polyprelu_formula_is_the_papers_type_one_with_a_prelu_base():
    """prelu(x) = max(0, x) + α min(0, x), α one learnable scalar per layer, 0.25 at init (torch's PReLU default)."""
    act = PolyPReLU(2).double()
    assert act.slope.shape == (1,) and act.slope.item() == 0.25
    assert [n for n, _ in act.named_parameters()] == ['weight', 'bias', 'slope']
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(1, -1)
    rho = torch.where(x > 0, x, 0.25 * x)
    torch.testing.assert_close(act.formula(x), 0.5 * rho ** 2 + 0.5 * rho)
    torch.testing.assert_close(act(x), 0.5 * rho ** 2 + 0.5 * rho)


def test_polyrelunorm_formula_is_polynorm_of_relu():
    act = PolyReLUNorm(3).double()
    x = torch.randn(4, 32, dtype=torch.float64)
    relu = torch.relu(x)
    powers = (relu, relu ** 2, relu ** 3)
    expected = sum(u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6) for u in powers) / 3
    torch.testing.assert_close(act.formula(x), expected)
    torch.testing.assert_close(act(x), expected)


@pytest.mark.parametrize("cls", [PolyPReLU, PolyReLUNorm])
def test_gradcheck_of_the_new_compositions(cls):
    x, weight, bias, _ = random_problem(3, shape=(4, 6))
    x = x + 0.05 * torch.sign(x)                                  # keep the inputs away from relu's kink at 0
    params = [weight, bias] + ([torch.tensor([0.2], dtype=torch.float64)] if cls is PolyPReLU else [])
    act = cls(3).double()

    def fn(x, weight, bias, *slope):
        if cls is PolyPReLU:
            return PolyBaseFunction.apply(x, weight, bias, 'prelu', slope[0])
        return PolyNormFunction.apply(torch.relu(x), weight, bias, act.eps)

    inputs = tuple(t.requires_grad_(True) for t in (x, *params))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_gated_polynorm_ffn_is_w_down_of_polynorm_gate_times_up():
    torch.manual_seed(0)
    mlp = MLP(tiny_config(activation='polynorm_glu', n_embd=64)).double()
    assert mlp.gated and isinstance(mlp.act, PolyNorm)
    x = torch.randn(2, 3, 64, dtype=torch.float64)
    gate, up = x @ mlp.c_gate.weight.t(), x @ mlp.c_fc.weight.t()
    expected = (poly_norm(gate, mlp.act.weight, mlp.act.bias) * up) @ mlp.c_proj.weight.t()
    torch.testing.assert_close(mlp(x), expected)


def test_gated_polynorm_gets_swiglus_width_and_the_parameter_match():
    assert ffn_hidden_size(2048, 'polynorm_glu') == ffn_hidden_size(2048, 'swiglu') == 5504
    assert ffn_hidden_size(128, 'polynorm_glu', 576) == 384
    for n_embd in (64, 128, 200, 768, 2048):
        swiglu, _ = ffn_matrix_and_scalar_counts(n_embd, 'swiglu')
        for activation in ('polynorm_glu', 'polyprelu', 'polyrelunorm'):
            matrices, total = ffn_matrix_and_scalar_counts(n_embd, activation)
            assert matrices == swiglu, (n_embd, activation)
        assert ffn_matrix_and_scalar_counts(n_embd, 'polyprelu')[1] - swiglu == 5      # r + 1 coefficients + α


@pytest.mark.parametrize("activation", ["polyprelu", "polyrelunorm", "polynorm_glu"])
@pytest.mark.parametrize("poly_order", [1, 5, 8])
def test_new_activations_build_at_every_order_and_match_the_plain_model(activation, poly_order):
    """The whole model through the fast paths equals the model through PolyCom.formula (fast = False)."""
    torch.manual_seed(0)
    model = GPT(tiny_config(activation=activation, poly_order=poly_order), verbose=False).double()
    idx = torch.randint(0, 32, (2, 16))
    results = []
    for fast in (True, False):
        for act in model.activations():
            act.fast = fast
        model.zero_grad(set_to_none=True)
        logits, loss = model(idx, idx)
        loss.backward()
        results.append((logits, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert model.activations()[0].order == poly_order


# ---- PolyCom backward under bf16 autocast, orders 1 to 8

def bf16_backward(cls, order, plain_bf16=False, seed=0):
    """dx and the coefficient gradients of cls(order) on bf16 inputs, under bf16 autocast (plain_bf16: the formula in
    bf16 arithmetic, the negative control), and the float64 formula's gradients on the same bf16 values."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(6, 64, generator=g) * 1.5).to(torch.bfloat16)
    upstream = torch.randn(6, 64, generator=g).to(torch.bfloat16)
    act = cls(order)
    with torch.no_grad():
        act.weight.copy_(torch.randn(order, generator=g))
        act.bias.fill_(0.3)
    x_in = x.clone().requires_grad_(True)
    if plain_bf16:
        low = cls(order).to(torch.bfloat16)
        low.load_state_dict(act.state_dict())
        low.formula(x_in).backward(upstream)
        grads = [p.grad.float() for p in low.parameters()]
    else:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = act(x_in)
        assert y.dtype == torch.bfloat16
        y.backward(upstream)
        grads = [p.grad for p in act.parameters()]
    ref = act.double()
    x64 = x.double().requires_grad_(True)
    ref.formula(x64).backward(upstream.double())
    return x_in.grad, grads, x64.grad, [p.grad for p in ref.parameters()]


@pytest.mark.parametrize("cls", [PolyNorm, PolyReLU, PolyPReLU, PolyReLUNorm])
@pytest.mark.parametrize("order", range(1, 9))
def test_bf16_autocast_backward_is_the_float64_gradient_to_bf16_and_fp32_precision(cls, order):
    """dx comes back in bf16, within one bf16 rounding of the float64 gradient (2^-8 relative, plus 1e-3 of the
    largest for the terms that cancel); the coefficient gradients are fp32 sums, within 1e-4. The formula run in bf16
    arithmetic misses the coefficient gradients by 0.2% to 26% (measured), the negative control below."""
    dx, grads, dx_ref, grads_ref = bf16_backward(cls, order)
    assert dx.dtype == torch.bfloat16
    bound = dx_ref.abs() * 2 ** -8 + 1e-3 * dx_ref.abs().max()
    assert ((dx.double() - dx_ref).abs() <= bound).all()
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-4 * grad_ref.abs().max().item())
    _, low_grads, _, _ = bf16_backward(cls, order, plain_bf16=True)
    assert max(((low - ref).abs() / (ref.abs() + 1e-3 * ref.abs().max())).max().item()
               for low, ref in zip([g.double() for g in low_grads], grads_ref)) > 1e-3


# ---- generate: greedy is the argmax, top-k samples stay in the top k

def test_greedy_tokens_are_the_argmax_of_the_logits_and_top_k_samples_fall_in_the_top_k():
    model = GPT(tiny_config(), verbose=False).eval()
    torch.manual_seed(0)
    idx = torch.randint(0, 32, (3, 4))
    out = model.generate(idx, 12, temperature=0)
    for t in range(4, 16):
        logits, _ = model(out[:, :t])
        assert torch.equal(out[:, t], logits[:, -1].argmax(dim=-1)), t
    torch.manual_seed(1)
    out = model.generate(idx, 30, temperature=2.0, top_k=3)           # runs past block_size 16: crops
    not_argmax = 0
    for t in range(4, 34):
        logits, _ = model(out[:, max(0, t - 16):t])
        top = logits[:, -1].topk(3).indices                            # (B, 3)
        assert (top == out[:, t:t + 1]).any(dim=-1).all(), t
        not_argmax += int((out[:, t] != top[:, 0]).sum())
    assert not_argmax > 10                                             # it samples: not greedy in disguise


# ---- causality, RoPE, FLOPs

@pytest.mark.parametrize("n_expert", [0, 4])
def test_logits_at_t_do_not_change_when_later_tokens_change(n_expert):
    torch.manual_seed(0)
    model = GPT(tiny_config(activation='polynorm', n_expert=n_expert, expert_hidden=64 if n_expert else 0),
                verbose=False).eval()
    idx = torch.randint(0, 32, (2, 16))
    t = 6
    changed = idx.clone()
    changed[:, t + 1:] = (idx[:, t + 1:] + torch.randint(1, 32, (2, 16 - t - 1))) % 32   # every later token differs
    before, _ = model(idx, idx)
    after, _ = model(changed, changed)
    torch.testing.assert_close(after[:, :t + 1], before[:, :t + 1], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(after[:, t + 1:], before[:, t + 1:], atol=1e-3)


def test_rope_attention_scores_depend_only_on_the_relative_position():
    """The same q and k at every position: after RoPE, q_m · k_n must be a function of m - n alone (a Toeplitz score
    matrix), and it must vary with m - n (positions are encoded)."""
    head_size, T = 16, 12
    cos, sin = rope_tables(head_size, T, 10000.0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(head_size, generator=g, dtype=torch.float64).expand(1, 1, T, head_size)
    k = torch.randn(head_size, generator=g, dtype=torch.float64).expand(1, 1, T, head_size)
    scores = (apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2))[0, 0]   # (T, T): q_m · k_n
    for offset in range(-(T - 1), T):
        diagonal = torch.diagonal(scores, offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores[0, 0], q[0, 0, 0] @ k[0, 0, 0], rtol=1e-6, atol=1e-6)   # m = n: no rotation
    assert scores[:, 0].std() > 0.1


def test_flops_per_token_against_hand_counts_for_untied_gpt2_and_moe_models():
    V, d, L, T = 32, 48, 2, 16
    attention = 12 * L * d * T                                   # scores and values, forward + backward
    hidden = 192                                                 # the paper's rule at d = 48: 1.5 x 128
    dense_layer = 4 * d * d + 2 * d + 2 * d * hidden              # qkv + output, two norm gains, FFN
    untied = GPT(tiny_config(tie_weights=False), verbose=False)  # the input embedding is a lookup: not counted
    assert untied.flops_per_token() == 6 * (V * d + L * dense_layer + d) + attention
    gpt2 = GPT(tiny_config(arch='gpt2'), verbose=False)           # learned positions: a lookup, not counted
    assert gpt2.flops_per_token() == 6 * (V * d + L * dense_layer + d) + attention
    moe = GPT(tiny_config(activation='polynorm', n_expert=4, top_k=2, expert_hidden=64), verbose=False)
    moe_layer = 4 * d * d + 2 * d + d * 4 + 2 * (2 * d * 64) + 4   # router, k = 2 of 4 experts, the shared PolyNorm
    assert moe.flops_per_token() == 6 * (V * d + L * moe_layer + d) + attention
