"""Attention statistics against a hand computation: nn.MultiheadAttention (alone and in
nn.TransformerEncoderLayer), F.scaled_dot_product_attention in user code, and Hugging Face
attention modules (eager and SDPA); the output's scale; no cost and no change to training."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backprobe.probe import attention

transformers = pytest.importorskip("transformers")


def hand(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, scale: float) -> tuple:
    """(largest logit, mean entropy, lowest head's mean entropy) in float64 from q [N, H, L,
    E], k [N, H, S, E] and the attended pairs [N or 1, H or 1, L, S]."""
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    allowed = allowed.expand_as(logits)
    masked = logits.masked_fill(~allowed, -math.inf)
    p = torch.softmax(masked, dim=-1)
    entropy = -(p * torch.log(p)).nan_to_num(0.0).sum(-1)  # [N, H, L]
    valid = allowed.any(-1)
    per_head = (entropy * valid).sum((0, 2)) / valid.sum((0, 2))
    return float(masked.max()), float(entropy[valid].mean()), float(per_head.min())


def recorded(probe, row: str) -> tuple[float, float, float]:
    i = probe.layers.index(row)
    return tuple(float(probe.history(name)[-1, i]) for name in attention.ATTENTION_STATISTICS)  # type: ignore[return-value]


def only_row(probe) -> tuple[float, float, float]:
    """The statistics of the one row that holds attention statistics."""
    values = attention_rows(probe)
    assert values.shape[1] == 1
    return tuple(values[:, 0])  # type: ignore[return-value]


def train_step(probe, model, *inputs, loss=lambda out: out.pow(2).mean()):
    with probe:
        out = model(*inputs)
        value = loss(out)
        value.backward()
        probe.step(value)
    return out


class Attend(nn.Module):
    """nn.MultiheadAttention called with masks, weights scaled up so that logits matter."""

    def __init__(self, batch_first: bool = True, need_weights: bool = True) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(12, 3, batch_first=batch_first)
        with torch.no_grad():
            self.mha.in_proj_weight.mul_(4.0)
            self.mha.in_proj_bias.normal_()
        self.need_weights = need_weights

    def forward(self, x, padding, causal):
        out, _ = self.mha(
            x, x, x, key_padding_mask=padding, attn_mask=causal, need_weights=self.need_weights
        )
        return out


def mha_hand(mha: nn.MultiheadAttention, x, padding, causal) -> tuple:
    """q, k from the packed input projection; not attended: True in a bool mask, -inf in
    a float one."""
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    e, h = mha.embed_dim, mha.num_heads
    q = (x @ w[:e].T + b[:e]).reshape(*x.shape[:2], h, -1).transpose(1, 2)
    k = (x @ w[e : 2 * e].T + b[e : 2 * e]).reshape(*x.shape[:2], h, -1).transpose(1, 2)
    attended = ~causal if causal.dtype == torch.bool else torch.isfinite(causal)
    allowed = ~padding[:, None, None, :] & attended[None, None]
    return hand(q, k, allowed, 1 / math.sqrt(e // h))


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_against_hand(make_probe, need_weights):
    model = Attend(need_weights=need_weights)
    x = torch.randn(5, 6, 12)
    padding = torch.zeros(5, 6, dtype=torch.bool)
    padding[1, 4:] = True
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    probe = make_probe(model)
    train_step(probe, model, x, padding, causal)
    np.testing.assert_allclose(
        recorded(probe, "mha"), mha_hand(model.mha, x, padding, causal), rtol=1e-5
    )


def test_multihead_attention_sequence_first_with_extra_keys(make_probe):
    """batch_first=False, bias_k and add_zero_attn: two keys every query attends to."""
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True)
    x = torch.randn(5, 3, 8)  # [L, N, E]
    probe = make_probe(mha)
    train_step(probe, mha, x, x, x, loss=lambda out: out[0].pow(2).mean())
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    q = (x @ w[:8].T + b[:8]).reshape(5, 3, 2, 4).permute(1, 2, 0, 3)
    k = torch.cat([x @ w[8:16].T + b[8:16], mha.bias_k.detach().expand(1, 3, 8)])
    k = k.reshape(6, 3, 2, 4).permute(1, 2, 0, 3)
    k = torch.cat([k, torch.zeros(3, 2, 1, 4)], dim=2)
    allowed = torch.ones(1, 1, 5, 7, dtype=torch.bool)
    np.testing.assert_allclose(
        recorded(probe, "MultiheadAttention"), hand(q, k, allowed, 0.5), rtol=1e-5
    )


def test_transformer_encoder_layer_attention_against_hand(make_probe):
    """nn.TransformerEncoderLayer trains through its nn.MultiheadAttention (no fast path
    with gradients): measured there, from the input the layer gives it."""
    layer = nn.TransformerEncoderLayer(12, 3, dim_feedforward=24, dropout=0.0, batch_first=True)
    seen = {}

    def keep(module, args):
        seen.setdefault("x", args[0])

    layer.self_attn.register_forward_pre_hook(keep)
    x = torch.randn(4, 5, 12)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    probe = make_probe(layer)
    train_step(probe, layer, x, causal)  # src_mask
    no_padding = torch.zeros(4, 5, dtype=torch.bool)
    expected = mha_hand(layer.self_attn, seen["x"].detach(), no_padding, causal)
    np.testing.assert_allclose(recorded(probe, "self_attn"), expected, rtol=1e-5)


class Mixer(nn.Module):
    """User code calling SDPA in a module whose name does not say attention, with
    grouped-query heads (2 key heads for 4 query heads)."""

    def __init__(self, causal: bool, gqa: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(16, 16)
        self.k = nn.Linear(16, 8 if gqa else 16)
        self.v = nn.Linear(16, 8 if gqa else 16)
        self.causal, self.gqa = causal, gqa

    def heads(self, x, proj):
        return proj(x).reshape(*x.shape[:2], -1, 4).transpose(1, 2)

    def forward(self, x, mask=None):
        q, k, v = self.heads(x, self.q) * 3, self.heads(x, self.k), self.heads(x, self.v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal, enable_gqa=self.gqa
        )
        return out.transpose(1, 2).flatten(2)


@pytest.mark.parametrize("causal, gqa, masked", [(True, False, False), (False, True, True)])
def test_sdpa_call_site_against_hand(make_probe, causal, gqa, masked):
    model = Mixer(causal, gqa)
    x = torch.randn(3, 6, 16)
    mask = torch.rand(3, 1, 6, 6) > 0.3 if masked else None
    probe = make_probe(model)
    train_step(probe, model, x, mask)
    q = model.heads(x, model.q).detach() * 3
    k = model.heads(x, model.k).detach()
    if gqa:
        k = k.repeat_interleave(2, dim=1)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None, None] if causal else mask
    # Mixer is not probed (no parameters of its own), nor in a block: the row of its last
    # probed layer holds its attention
    assert np.isfinite(recorded(probe, probe.layers[-1])).all()
    np.testing.assert_allclose(only_row(probe), hand(q, k, allowed, 0.5), rtol=1e-5)


def test_long_sequences_are_measured_in_blocks(make_probe, monkeypatch):
    model = Mixer(causal=True)
    x = torch.randn(3, 6, 16)
    whole = make_probe(model)
    train_step(whole, model, x)
    monkeypatch.setattr(attention, "CHUNK", 10)  # one query of one sequence per block
    blocks = make_probe(model)
    train_step(blocks, model, x)
    np.testing.assert_allclose(only_row(blocks), only_row(whole), rtol=1e-6)


def test_only_the_first_sequences_are_measured(make_probe, monkeypatch):
    monkeypatch.setattr(attention, "ATTENTION_SAMPLES", 2)
    model = Mixer(causal=False)
    x = torch.randn(5, 6, 16)
    probe = make_probe(model)
    train_step(probe, model, x)
    q, k = model.heads(x, model.q).detach() * 3, model.heads(x, model.k).detach()
    allowed = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    expected = hand(q[:2], k[:2], allowed, 0.5)
    np.testing.assert_allclose(only_row(probe), expected, rtol=1e-5)


def build(model_class, config, implementation: str, seed: int) -> nn.Module:
    """A Hugging Face model with random weights and the given attention implementation."""
    config._attn_implementation = implementation
    torch.manual_seed(seed)
    return model_class(config)


def gpt2(implementation: str) -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = build(transformers.GPT2LMHeadModel, config, implementation, seed=3)
    with torch.no_grad():  # larger logits than the 0.02 initialisation gives
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(20.0)
    return model


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hugging_face_gpt2_attention_against_hand(make_probe, implementation):
    """GPT2Attention: q, k from c_attn of the attention's input, causal, 1/√d; stored in
    the block's row (transformer.h.i)."""
    model = gpt2(implementation)
    inputs = {}

    def keep(module, args, kwargs):
        inputs.setdefault(module.layer_idx, args[0] if args else kwargs["hidden_states"])

    for block in model.transformer.h:
        block.attn.register_forward_pre_hook(keep, with_kwargs=True)
    ids = torch.randint(0, 50, (3, 9))
    probe = make_probe(model)
    out = train_step(probe, model, ids, loss=lambda out: out.logits.pow(2).mean())
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None, None]
    for i, block in enumerate(model.transformer.h):
        q, k, _ = block.attn.c_attn(inputs[i]).detach().split(32, dim=2)
        q, k = (t.reshape(3, 9, 4, 8).transpose(1, 2) for t in (q, k))
        expected = hand(q, k, causal, 1 / math.sqrt(8))
        np.testing.assert_allclose(recorded(probe, f"transformer.h.{i}"), expected, rtol=1e-5)
    logits = out.logits.detach().double()
    np.testing.assert_allclose(probe.history("output_max")[-1, 0], logits.abs().max(), rtol=1e-6)
    rms = logits.pow(2).mean().sqrt()
    np.testing.assert_allclose(probe.history("output_rms")[-1, 0], rms, rtol=1e-6)


def attention_rows(probe) -> np.ndarray:
    """[stats, layers] of the rows that hold attention statistics."""
    values = np.stack([probe.history(n)[-1] for n in attention.ATTENTION_STATISTICS])
    return values[:, ~np.isnan(values[0])]


def hf_entropies(attentions) -> np.ndarray:
    """Mean entropy per layer of the attention probabilities a HF model returns (every
    query attends to a key)."""
    return np.asarray(
        [
            float(
                -(p.detach().double() * torch.log(p.detach().double()))
                .nan_to_num(0.0)
                .sum(-1)
                .mean()
            )
            for p in attentions
        ]
    )


def llama(implementation: str) -> nn.Module:
    config = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=50,
    )
    model = build(transformers.LlamaForCausalLM, config, implementation, seed=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30.0)
            layer.self_attn.k_proj.weight.mul_(10.0)
    return model


def test_hugging_face_llama_sdpa_equals_eager_and_its_probabilities(make_probe):
    """LlamaAttention (rotary embeddings, 2 key heads for 4 query heads): SDPA's q, k and
    eager's softmax input give the same statistics; the entropy is that of the
    probabilities the model returns."""
    ids = torch.randint(0, 50, (2, 10))
    rows = {}
    for implementation in ("eager", "sdpa"):
        model = llama(implementation)
        probe = make_probe(model)
        train_step(probe, model, ids, loss=lambda out: out.logits.pow(2).mean())
        held = np.isfinite(probe.history("attn_logit_max")[-1])
        assert [n for n, h in zip(probe.layers, held, strict=True) if h] == [
            "model.layers.0",
            "model.layers.1",
        ]
        rows[implementation] = attention_rows(probe)
    np.testing.assert_allclose(rows["sdpa"], rows["eager"], rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probabilities = llama("eager")(ids, output_attentions=True).attentions
    np.testing.assert_allclose(rows["sdpa"][1], hf_entropies(probabilities), rtol=1e-5)
    assert (rows["sdpa"][0] > 1.0).all()  # the scaled-up queries: logits well above 0


def test_hugging_face_bert_padding_mask(make_probe):
    """BertSelfAttention with a padding mask (eager: added as the dtype's lowest value;
    SDPA: passed as a mask): padded keys do not count."""
    ids = torch.randint(0, 50, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 5:] = 0
    rows = {}
    for implementation in ("eager", "sdpa"):
        config = transformers.BertConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=48,
            vocab_size=50,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = build(transformers.BertModel, config, implementation, seed=5)
        probe = make_probe(model)
        train_step(
            probe,
            model,
            ids,
            mask,
            loss=lambda out: out.last_hidden_state.pow(2).mean(),
        )
        rows[implementation] = attention_rows(probe)
    np.testing.assert_allclose(rows["sdpa"], rows["eager"], rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = build(transformers.BertModel, config, "eager", seed=5)
        probabilities = eager(ids, mask, output_attentions=True)
    entropies = hf_entropies(probabilities.attentions)
    # the padded keys' probabilities are exactly 0: their entropy terms vanish
    np.testing.assert_allclose(rows["eager"][1], entropies, rtol=1e-5)


def test_training_is_bitwise_unchanged_and_unrecorded_steps_carry_no_hook(make_probe):
    """GPT-2 with dropout, SDPA and an nn.TransformerEncoderLayer: parameters after three
    steps equal plain training's bit for bit; between recorded steps no attention hook
    or function mode is left."""
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(6)
    model = transformers.GPT2LMHeadModel(config)
    twin = copy.deepcopy(model)
    ids = torch.randint(0, 50, (2, 8))

    def fit(net, probe=None):
        torch.manual_seed(7)  # the same dropout masks
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        hooks = []
        for _ in range(3):
            net(ids, labels=ids).loss.backward()
            if probe is not None:
                probe.step()
                assert not torch._C._is_torch_function_mode_enabled()
                hooks.append(sum(len(m._forward_pre_hooks) for m in net.modules()))
            opt.step()
            opt.zero_grad()
        return [p.detach().clone() for p in net.parameters()], hooks

    plain, _ = fit(twin)
    probe = make_probe(model, every=2).attach()
    watched, hooks = fit(model, probe)
    probe.close()
    for a, b in zip(plain, watched, strict=True):
        assert torch.equal(a, b)
    # after steps 0 and 2 the next step is unrecorded / recorded: hooks only before the latter
    assert hooks[0] == 0 and hooks[1] > 0
    assert np.isfinite(attention_rows(probe)).all()


def test_block_statistics_skip_queries_that_attend_to_nothing():
    """One block of large logits (near one-hot rows) with a mask that leaves one query of
    one sequence no key: that query counts for neither the entropy nor the queries."""
    torch.manual_seed(0)
    q, k = torch.randn(3, 2, 5, 4) * 3, torch.randn(3, 2, 7, 4) * 3
    allowed = torch.rand(3, 1, 5, 7) > 0.4
    allowed[:, :, :, 0] = True
    allowed[1, 0, 2] = False  # query 2 of sequence 1 attends to nothing
    raw = q @ k.transpose(-1, -2)
    closed = attention._closed_where(~allowed)
    peak, sums, counts = attention._block_stats(raw, closed, None, attention.Workspace())
    largest, mean, lowest = hand(q, k, allowed, 1.0)
    assert float(peak) == pytest.approx(largest, rel=1e-6)
    assert counts.tolist() == [14.0, 14.0]  # 3 sequences x 5 queries, less one, per head
    assert float(sums.sum() / counts.sum()) == pytest.approx(mean, rel=1e-5)
    assert float((sums / counts).min()) == pytest.approx(lowest, rel=1e-5)


def test_float_mask_bias_counts_in_the_entropy_not_in_the_largest_logit():
    """An additive float mask (finite biases, as ALiBi adds, and -inf where closed) with a
    causal mask on top: the entropy is that of softmax(q·k·s + bias) over the open pairs,
    the largest logit q·k·s alone over them; a query whose keys are all closed counts in
    neither."""
    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 5, 4) * 2, torch.randn(2, 3, 5, 4) * 2
    bias = torch.randn(2, 1, 5, 5) * 3
    bias[0, 0, 1, :2] = -math.inf  # query 1 of sequence 0: its only causal keys closed
    bias[1, 0, 3, 2] = -math.inf
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    peak, sums, counts = attention.logit_stats(
        q, k, 0.5, attention.Masks([(bias, True)], causal=True)
    )
    raw = (q.double() @ k.double().transpose(-1, -2)) * 0.5
    allowed = (causal & torch.isfinite(bias)).expand_as(raw)
    p = torch.softmax((raw + bias.double()).masked_fill(~allowed, -math.inf), dim=-1)
    entropy = -(p * torch.log(p)).nan_to_num(0.0).sum(-1)
    valid = allowed.any(-1)
    assert float(peak) == pytest.approx(float(raw.masked_fill(~allowed, -math.inf).max()))
    assert counts.tolist() == valid.sum((0, 2)).double().tolist() == [9.0, 9.0, 9.0]
    np.testing.assert_allclose(sums.numpy(), (entropy * valid).sum((0, 2)).numpy(), rtol=1e-5)
