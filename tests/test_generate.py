"""GPT.generate with the KV cache: the prompt runs once, then one token per step, and the tokens are those of
kv_cache=False (which reruns the last block_size tokens every step) for every activation, dense and MoE, both archs,
batches, and past block_size, where the cache refills from the sliding window (sample.py's --kv_cache: test_sample.py)."""

import pytest
import torch

import model as model_module
from model import ACTIVATIONS, GPT, GPTConfig, KVCache



def tiny_model(**overrides):
    """float64 (no near-ties between the two computations' logits) and a wide init (sharp, varied greedy tokens)."""
    settings = dict(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=48, init_std=0.3)
    settings.update(overrides)
    return GPT(GPTConfig(**settings), verbose=False).double().eval()


def prompt(batch=3, length=4, seed=0):
    return torch.randint(0, 32, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_same_greedy_tokens(model, idx, new_tokens=12):
    cached = model.generate(idx, new_tokens, temperature=0, kv_cache=True)
    plain = model.generate(idx, new_tokens, temperature=0, kv_cache=False)
    assert cached.shape == (idx.shape[0], idx.shape[1] + new_tokens)
    assert torch.equal(cached, plain), (cached, plain)
    assert len(set(plain[:, idx.shape[1]:].flatten().tolist())) >= 3   # varied tokens: a real test, not one repeated


@pytest.mark.parametrize('activation', list(ACTIVATIONS))
def test_greedy_tokens_with_the_cache_equal_those_without_for_every_activation(activation):
    assert_same_greedy_tokens(tiny_model(activation=activation), prompt())


@pytest.mark.parametrize('activation, overrides', [
    ('polynorm', {}), ('swiglu', {}), ('gelu', dict(norm_topk=True)), ('polyrelu', dict(per_expert_poly=True)),
    ('polynorm_glu', dict(shared_expert=True, moe_every=2)),            # an MoE block after a dense one
])
def test_greedy_tokens_with_the_cache_equal_those_without_for_moe(activation, overrides):
    assert_same_greedy_tokens(tiny_model(activation=activation, n_expert=4, top_k=2, expert_hidden=64, **overrides),
                              prompt())


@pytest.mark.parametrize('activation', ['gelu', 'polynorm', 'swiglu'])
def test_greedy_tokens_with_the_cache_equal_those_without_for_gpt2_learned_positions(activation):
    assert_same_greedy_tokens(tiny_model(activation=activation, arch='gpt2', bias=True), prompt())


def test_qk_norm_and_untied_weights_keep_the_tokens():
    assert_same_greedy_tokens(tiny_model(activation='polynorm', qk_norm=True, tie_weights=False), prompt())


def test_each_row_of_a_batch_is_generated_as_if_alone():
    model, idx = tiny_model(activation='polynorm'), prompt(batch=4)
    together = model.generate(idx, 12, temperature=0)
    for b in range(4):
        assert torch.equal(model.generate(idx[b:b + 1], 12, temperature=0), together[b:b + 1])


def test_cached_logits_equal_the_full_forward_whatever_the_chunks_fed():
    """Feeding the 16 positions in chunks of 3, 1, 5, 7 (a chunk after earlier positions needs the causal mask offset
    by the cache length): each chunk's last logits are those of a plain forward of the whole prefix."""
    for overrides in ({}, dict(arch='gpt2'), dict(n_expert=4, expert_hidden=64)):
        model, idx = tiny_model(activation='polynorm', **overrides), prompt(batch=2, length=16)
        caches = [KVCache(16) for _ in model.transformer.h]
        end = 0
        for chunk in (3, 1, 5, 7):
            logits = model.forward_cached(idx[:, end:end + chunk], caches)
            end += chunk
            expected, _ = model(idx[:, :end])
            torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10, msg=f"{overrides} at {end}")
        assert [c.length for c in caches] == [16, 16]


def fed_lengths(model, monkeypatch):
    """Record how many tokens each generation step runs through the model."""
    lengths = []
    forward_cached = model.forward_cached
    monkeypatch.setattr(model, 'forward_cached', lambda idx, caches: lengths.append(idx.shape[1]) or
                        forward_cached(idx, caches))
    return lengths


def test_the_prompt_runs_once_then_one_token_per_step(monkeypatch):
    model = tiny_model(activation='polynorm')
    lengths = fed_lengths(model, monkeypatch)
    model.generate(prompt(length=5), 11, temperature=0)                 # 5 + 11 = block_size 16: all fit
    assert lengths == [5] + [1] * 10


@pytest.mark.parametrize('overrides', [dict(activation='polynorm'), dict(activation='gelu', arch='gpt2'),
                                       dict(activation='swiglu', n_expert=4, expert_hidden=64)])
def test_past_block_size_the_cache_refills_from_the_window_and_stays_exact(monkeypatch, overrides):
    """Our choice past block_size: exact. Once prompt + tokens pass block_size, every step refills the cache from the
    last block_size tokens (the window slides, so every position and cached key changes), giving kv_cache=False's
    tokens for any length, and for a prompt longer than block_size too (cropped to its last block_size tokens)."""
    model = tiny_model(**overrides)
    assert_same_greedy_tokens(model, prompt(length=4), new_tokens=30)
    assert_same_greedy_tokens(model, prompt(length=20), new_tokens=6)
    lengths = fed_lengths(model, monkeypatch)
    model.generate(prompt(length=4), 20, temperature=0)
    assert lengths == [4] + [1] * 12 + [16] * 7       # 4 + 12 tokens fill the 16 positions; then a refill per token


def test_sampling_draws_the_same_tokens_with_and_without_the_cache_from_the_same_seed():
    model, idx = tiny_model(activation='polyrelu'), prompt()
    torch.manual_seed(3)
    cached = model.generate(idx, 25, temperature=0.9, top_k=10, kv_cache=True)
    torch.manual_seed(3)
    plain = model.generate(idx, 25, temperature=0.9, top_k=10, kv_cache=False)
    assert torch.equal(cached, plain)


def test_generation_runs_without_dropout_and_gives_the_model_back_in_its_mode():
    model, idx = tiny_model(activation='polynorm', dropout=0.5), prompt()
    eval_tokens = model.generate(idx, 12, temperature=0)
    model.train()
    assert torch.equal(model.generate(idx, 12, temperature=0, kv_cache=True), eval_tokens)
    assert torch.equal(model.generate(idx, 12, temperature=0, kv_cache=False), eval_tokens)
    assert model.training


def test_generated_tokens_are_a_plain_tensor_that_a_training_step_can_take():
    model = tiny_model(activation='polynorm')
    out = model.generate(prompt(), 12, temperature=0.8, top_k=5)          # generated under torch.inference_mode
    assert not out.is_inference() and out.dtype == torch.long
    _, loss = model(out[:, :-1], out[:, 1:].contiguous())
    loss.backward()                                                     # saving out for backward must work
    assert model.transformer.wte.weight.grad is not None


def test_the_training_forward_builds_no_cache(monkeypatch):
    monkeypatch.setattr(model_module, 'KVCache', None)                 # any use of it would fail
    model, idx = tiny_model(activation='polynorm'), prompt(length=16)
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 32) and loss.item() > 0


def test_bad_kv_cache_values_and_an_overfull_cache_raise_one_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"^kv_cache must be True or False, got 'maybe'$"):
        model.generate(prompt(), 2, kv_cache='maybe')
    cache = KVCache(4)
    cache.append(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8))
    with pytest.raises(ValueError, match=r"^the KV cache holds 4 positions \(block_size\); 3 are filled and 2 more"):
        cache.append(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8))
