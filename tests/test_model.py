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
                   PolyReLU, RMSNorm, build_activation, ffn_hidden_size, upgrade_model_args)

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import REPO, make_char_dataset, read_log, run_script  # noqa: E402


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
                '--log_interval=1', '--warmup_iters=1'])
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
