"""model.py: the PolyCom activations are exactly the paper's, the FFNs are parameter-matched, every activation trains and
compiles, and bad arguments fail with a clear ValueError."""

import pytest
import torch
import torch.nn.functional as F

from model import (ACTIVATIONS, GPT, MLP, GPTConfig, PolyBaseFunction, PolyCom, PolyNorm, PolyNormFunction, PolyReLU,
                   build_activation, ffn_hidden_size)


def tiny_config(**overrides):
    settings = dict(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=48, dropout=0.0)
    settings.update(overrides)
    return GPTConfig(**settings)


# ---- reference formulas, written as plainly as the paper states them (plain autograd, float64)

def reference_polyrelu(x, weight, bias):
    r = weight.numel()
    return bias + sum(weight[r - i] * torch.relu(x) ** i for i in range(1, r + 1))


def reference_polynorm(x, weight, bias, eps=1e-6):
    r = weight.numel()

    def rms_norm(u):
        return u / torch.sqrt(u.pow(2).mean(dim=-1, keepdim=True) + eps)

    return bias + sum(weight[r - i] * rms_norm(x ** i) for i in range(1, r + 1))


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


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_polyrelu_forward_and_backward_equal_reference(order):
    x, weight, bias, upstream = random_problem(order)
    ours = value_and_grads(lambda x, w, b: PolyBaseFunction.apply(x, w, b, 'relu'), x, weight, bias, upstream)
    ref = value_and_grads(reference_polyrelu, x, weight, bias, upstream)
    for a, b, what in zip(ours, ref, ("y", "dx", "dweight", "dbias")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"PolyReLU r={order}: {what} differs")


@pytest.mark.parametrize("order", [1, 2, 3, 4])
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


def test_bf16_autocast_computes_powers_in_fp32():
    x = (torch.randn(8, 64) * 8).to(torch.bfloat16)    # x^6 of such values has no useful bf16 precision
    act = PolyNorm()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = act(x)
    assert y.dtype == torch.bfloat16
    expected = reference_polynorm(x.double(), act.weight.double(), act.bias.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-2, atol=1e-2)   # only the final cast rounds to bf16


# ---- memory: bytes saved for backward

def saved_bytes_of_ffn(activation, n_embd=64, tokens=(4, 32)):
    torch.manual_seed(0)
    mlp = MLP(tiny_config(activation=activation, n_embd=n_embd))
    x = torch.randn(*tokens, n_embd, requires_grad=True)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x).sum().backward()
    return total


@pytest.mark.parametrize("activation", ["polynorm", "polyrelu", "polygelu"])
def test_polycom_ffn_saves_no_more_than_gelu_ffn(activation):
    ratio = saved_bytes_of_ffn(activation) / saved_bytes_of_ffn("gelu")
    assert ratio <= 1.01, f"{activation} FFN saves {ratio:.3f}x the bytes of the GELU FFN"


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

def test_gated_ffn_gets_two_thirds_of_the_width_like_the_paper():
    assert ffn_hidden_size(2048, 'swiglu', 8256) == 5504
    assert ffn_hidden_size(2048, 'polynorm', 8256) == 8256
    assert ffn_hidden_size(768, 'swiglu') == 2048 and ffn_hidden_size(768, 'gelu') == 3072


def test_swiglu_and_polynorm_ffn_parameter_counts_agree_within_one_percent():
    counts = {a: GPT(tiny_config(activation=a, n_embd=192, n_head=4), verbose=False).num_ffn_params()
              for a in ("swiglu", "polynorm")}
    assert abs(counts["swiglu"] / counts["polynorm"] - 1) < 0.01, counts


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


# ---- bad input

@pytest.mark.parametrize("overrides, message", [
    (dict(activation='tanhh'), "valid choices"),
    (dict(poly_order=0), "poly_order"),
    (dict(poly_order=9), "poly_order"),
    (dict(poly_order=2.5), "poly_order"),
    (dict(arch='llama'), "arch"),
    (dict(n_embd=50, n_head=3), "divisible"),
    (dict(dropout=1.0), "dropout"),
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
