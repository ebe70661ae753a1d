"""Real architectures, built from their public definitions at small sizes.

The diagnosis is judged on models nobody on this project wrote: Hugging Face's own
classes (GPT-2, BERT, T5, Llama) from small configs, and models written here after
their published definitions (nanoGPT, the PyTorch word-language model's LSTM, GRU and
Transformer, a ResNet with BatchNorm, a ViT with root parameters, an encoder built on
``nn.MultiheadAttention``). Weights are random (PyTorch's or the library's own
initialisation, as a user gets them), nothing is downloaded.

Each :class:`Architecture` gives a seeded model, a seeded batch in the form ``bp.check``
takes (the model's input, a dict of keyword arguments, or an ``(input, target)`` pair)
and the loss function that goes with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 64  # tokens of every language model here
SEQ = 16  # tokens per sequence
BATCH = 4


@dataclass(frozen=True)
class Architecture:
    """One model family: how to build it, feed it and score it.

    ``build()`` is seeded (the same weights at every call); ``batch(seed)`` returns what
    ``bp.check`` takes as ``batch``; ``loss_fn`` what it takes as ``loss_fn``.
    ``source`` names the public definition the model follows.
    """

    name: str
    source: str
    make: Callable[[], nn.Module]
    batch: Callable[[int], object]
    loss_fn: Callable[..., torch.Tensor]

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.make()


def loss_of(model: nn.Module, batch: object, loss_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """The loss of one batch, fed the way ``bp.check`` feeds it."""
    if isinstance(batch, dict):
        return loss_fn(model(**batch))
    if isinstance(batch, tuple):
        inputs, targets = batch
        return loss_fn(model(inputs), targets)
    return loss_fn(model(batch))


def _tokens(seed: int, batch: int = BATCH, length: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _hf_batch(seed: int) -> dict[str, torch.Tensor]:
    ids = _tokens(seed)
    return {"input_ids": ids, "labels": ids}


def _hf_loss(output: object) -> torch.Tensor:
    return output.loss  # type: ignore[attr-defined]  # a transformers ModelOutput


def _quiet_hf() -> None:
    """Small configs trip warnings about token ids outside the tiny vocabulary."""
    from transformers.utils import logging

    logging.set_verbosity_error()


# ------------------------------------------------------------------- Hugging Face


def gpt2() -> nn.Module:
    import transformers

    _quiet_hf()
    config = transformers.GPT2Config(
        n_layer=4,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=SEQ,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def bert() -> nn.Module:
    import transformers

    _quiet_hf()
    config = transformers.BertConfig(
        num_hidden_layers=4,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        pad_token_id=0,
    )
    return transformers.BertForMaskedLM(config)


def t5() -> nn.Module:
    import transformers

    _quiet_hf()
    config = transformers.T5Config(
        num_layers=3,
        d_model=32,
        d_ff=64,
        num_heads=2,
        d_kv=16,
        vocab_size=VOCAB,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return transformers.T5ForConditionalGeneration(config)


def llama() -> nn.Module:
    import transformers

    _quiet_hf()
    config = transformers.LlamaConfig(
        num_hidden_layers=4,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=VOCAB,
        max_position_embeddings=SEQ,
        bos_token_id=0,
        eos_token_id=1,
    )
    return transformers.LlamaForCausalLM(config)


# ------------------------------------------------------------------------- nanoGPT


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention: one projection to q, k, v; causal SDPA; an output projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoMLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    """Pre-LN: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = NanoMLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT: token and position embeddings, pre-LN blocks, a final LayerNorm and
    a head tied to the token embedding; N(0, 0.02) weights, residual projections scaled
    by 1/sqrt(2·layers)."""

    def __init__(self, layers: int = 4, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(VOCAB, width),
                "wpe": nn.Embedding(SEQ, width),
                "h": nn.ModuleList(NanoBlock(width, heads) for _ in range(layers)),
                "ln_f": nn.LayerNorm(width),
            }
        )
        self.lm_head = nn.Linear(width, VOCAB, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def _next_token_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _tokens(seed, length=SEQ + 1)
    return ids[:, :-1], ids[:, 1:]


def _token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position: logits [B, T, V] (or [T, B, V]), targets alike."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ------------------------------------------------------ PyTorch word-language model


class WordRNN(nn.Module):
    """The word-language model of pytorch/examples: embedding, dropout, a 2-layer LSTM,
    GRU or RNN (``nonlinearity`` "tanh" or "relu"), dropout, a linear decoder; encoder and
    decoder weights U(−0.1, 0.1), decoder bias 0, the recurrent layers at PyTorch's
    default init. Input and output are [T, B]."""

    def __init__(
        self,
        cell: str,
        hidden: int = 32,
        layers: int = 2,
        dropout: float = 0.2,
        nonlinearity: str = "tanh",
    ):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(VOCAB, hidden)
        extra = {"nonlinearity": nonlinearity} if cell == "RNN" else {}
        self.rnn = getattr(nn, cell)(hidden, hidden, layers, dropout=dropout, **extra)
        self.decoder = nn.Linear(hidden, VOCAB)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.drop(self.encoder(tokens)))
        return self.decoder(self.drop(output))


class PositionalEncoding(nn.Module):
    """Sine and cosine positions added to [T, B, C] inputs, then dropout."""

    def __init__(self, width: int, dropout: float = 0.1, max_len: int = 64) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
        pe = torch.zeros(max_len, 1, width)
        pe[:, 0, 0::2] = torch.sin(position * div)
        pe[:, 0, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[: x.size(0)])


class WordTransformer(nn.Module):
    """The word-language model's Transformer: embedding × sqrt(width), positions, a causal
    ``nn.TransformerEncoder`` (post-LN, ReLU), a linear decoder; [T, B] in and out."""

    def __init__(self, width: int = 32, heads: int = 2, hidden: int = 64, layers: int = 2):
        super().__init__()
        self.width = width
        self.input_emb = nn.Embedding(VOCAB, width)
        self.pos_encoder = PositionalEncoding(width)
        layer = nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.1)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.decoder = nn.Linear(width, VOCAB)
        nn.init.uniform_(self.input_emb.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[0])
        x = self.pos_encoder(self.input_emb(tokens) * math.sqrt(self.width))
        return self.decoder(self.encoder(x, mask=mask, is_causal=True))


def _time_major_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, B] inputs and next-token targets, T = 35 as in the example's default bptt."""
    ids = _tokens(seed, length=36).T.contiguous()
    return ids[:-1], ids[1:]


# ---------------------------------------------------------------------- vision


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv + BatchNorm, a projection shortcut on a stride."""

    def __init__(self, inputs: int, outputs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )
            if stride != 1 or inputs != outputs
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """A small ResNet (He et al. 2016; torchvision's layout): stem, three stages of two
    basic blocks, global pooling, a linear head; Kaiming-normal conv weights."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages, inputs = [], width
        for k in range(3):
            outputs = width * 2**k
            stride = 1 if k == 0 else 2
            stages.append(
                nn.Sequential(BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs))
            )
            inputs = outputs
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inputs, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """A small VGG (Simonyan & Zisserman 2015, configuration A's layout, no BatchNorm):
    3×3 convolutions with ReLU and max pooling, then Linear–ReLU–Dropout twice and a
    linear classifier; He-normal weights and zero biases."""

    def __init__(self, widths: tuple[int, ...] = (8, "M", 16, "M", 32, 32, "M", 64, 64, "M"),
                 hidden: int = 64, classes: int = 10) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(width), 3, padding=1), nn.ReLU()]
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, classes),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(images), 1))


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021): patches by a strided conv, a
    class token and position embeddings owned by the root module, pre-LN
    ``nn.TransformerEncoderLayer`` blocks (GELU), a LayerNorm and a linear head on the
    class token; N(0, 0.02) for the tokens, as timm initialises them."""

    def __init__(self, width: int = 32, depth: int = 4, heads: int = 2, patch: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, patch, patch)
        patches = (16 // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, width) * 0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                2 * width,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, patches, width]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def _images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


# ------------------------------------------------------- nn.MultiheadAttention


class AttentionEncoder(nn.Module):
    """A post-LN encoder written directly on ``nn.MultiheadAttention`` (whose
    ``out_proj`` is a Linear that never runs as a module): embedding, blocks of
    x = LN(x + MHA(x)), x = LN(x + FFN(x)), mean pooling, a classifier. Without
    ``residual`` the blocks are x = LN(MHA(x)), x = LN(FFN(x))."""

    def __init__(
        self, width: int = 32, heads: int = 2, depth: int = 3, classes: int = 4, residual=True
    ):
        super().__init__()
        self.residual = residual
        self.embed = nn.Embedding(VOCAB, width)
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(width, heads, batch_first=True) for _ in range(depth)
        )
        self.norm1 = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.ffn = nn.ModuleList(
            nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
            for _ in range(depth)
        )
        self.norm2 = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.classifier = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for attn, norm1, ffn, norm2 in zip(
            self.attn, self.norm1, self.ffn, self.norm2, strict=True
        ):
            skip = x if self.residual else 0.0
            x = norm1(skip + attn(x, x, x, need_weights=False)[0])
            skip = x if self.residual else 0.0
            x = norm2(skip + ffn(x))
        return self.classifier(x.mean(dim=1))


def _token_classes(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (8, SEQ), generator=g), torch.randint(0, 4, (8,), generator=g)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("gpt2", "transformers.GPT2LMHeadModel", gpt2, _hf_batch, _hf_loss),
        Architecture("bert", "transformers.BertForMaskedLM", bert, _hf_batch, _hf_loss),
        Architecture("t5", "transformers.T5ForConditionalGeneration", t5, _hf_batch, _hf_loss),
        Architecture("llama", "transformers.LlamaForCausalLM", llama, _hf_batch, _hf_loss),
        Architecture(
            "nanogpt", "karpathy/nanoGPT model.py", NanoGPT, _next_token_batch, _token_loss
        ),
        Architecture(
            "word_lstm",
            "pytorch/examples word_language_model (LSTM)",
            lambda: WordRNN("LSTM"),
            _time_major_batch,
            _token_loss,
        ),
        Architecture(
            "word_gru",
            "pytorch/examples word_language_model (GRU)",
            lambda: WordRNN("GRU"),
            _time_major_batch,
            _token_loss,
        ),
        Architecture(
            "word_transformer",
            "pytorch/examples word_language_model (Transformer)",
            WordTransformer,
            _time_major_batch,
            _token_loss,
        ),
        Architecture(
            "resnet", "He et al. 2016, torchvision resnet layout", ResNet, _images, F.cross_entropy
        ),
        Architecture(
            "vit",
            "Dosovitskiy et al. 2021, timm VisionTransformer layout",
            ViT,
            _images,
            F.cross_entropy,
        ),
        Architecture(
            "vgg",
            "Simonyan & Zisserman 2015, configuration A layout",
            VGG,
            _images,
            F.cross_entropy,
        ),
        Architecture(
            "mha_encoder",
            "nn.MultiheadAttention post-LN encoder",
            AttentionEncoder,
            _token_classes,
            F.cross_entropy,
        ),
    )
}
