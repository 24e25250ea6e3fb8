#!/usr/bin/env python3
"""Python PyTorch reference for bench/text: the training steps graft_text_bench times, written the way a
PyTorch user writes them (nn.Module, eager mode), since the transformers package is not installed here.

The two models re-implement Hugging Face transformers v4.31 (models/bert/modeling_bert.py,
models/gpt2/modeling_gpt2.py, pytorch_utils.Conv1D, activations.NewGELUActivation) with the same shapes and
the same operations in the same order: BERT embeddings + post-LN encoder (exact erf gelu) + pooler +
dropout + classifier with cross-entropy; GPT-2 pre-LN blocks with Conv1D weights (in, out), gelu_new,
the causal mask applied by torch.where, tied LM head, shifted cross-entropy. Dropouts are Hugging Face's
defaults (0.1) and the models are in train mode. PyTorch 1.13 has no scaled_dot_product_attention, so
attention is matmul + softmax as in transformers 4.31.

  reference_text.py train-bert|train-gpt2 --steps N --warmup W --window S --batch B --seq T --threads K
                    [--size tiny|base] [--lora R]
      AdamW lr 1e-4 over one batch of random ids made once from the seed; a step is zero_grad, forward,
      loss, backward, optimizer step. steps_per_s: the median over windows of S steps after W warm-up.
      --size base: bert-base-uncased's shape; --lora R: PEFT v0.5's LoRA (r = alpha = R, dropout 0.1) on
      query and value with the classifier trained whole, PEFT's layer re-written (LoraLinear) since peft
      is not installed (bench/lora).
      --profile TRACE.json: torch.profiler's Chrome trace of the timed steps.
  reference_text.py tokenize --tiktoken-dir DIR --tokenizer DIR FILE --repeat N [--dump-ids PATH]
      OpenAI's tiktoken (installed into DIR by bench/text when a wheel is at hand) with the GPT-2 ranks
      built from the encoder.json + vocab.bpe in --tokenizer, over the same ~4 KB line-aligned chunks.
Prints one JSON line.
"""
import argparse, json, math, resource, statistics, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------
# BERT (BertForSequenceClassification)


class BertEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=0)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])
        self.register_buffer("position_ids", torch.arange(c["max_position_embeddings"]).expand((1, -1)))
        self.register_buffer("token_type_ids", torch.zeros(self.position_ids.size(), dtype=torch.long))

    def forward(self, input_ids):
        seq_length = input_ids.size(1)
        position_ids = self.position_ids[:, :seq_length]
        token_type_ids = self.token_type_ids[:, :seq_length].expand(input_ids.size(0), seq_length)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.num_attention_heads = c["num_attention_heads"]
        self.attention_head_size = c["hidden_size"] // c["num_attention_heads"]
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(c["hidden_size"], self.all_head_size)
        self.key = nn.Linear(c["hidden_size"], self.all_head_size)
        self.value = nn.Linear(c["hidden_size"], self.all_head_size)
        self.dropout = nn.Dropout(c["attention_probs_dropout_prob"])

    def transpose_for_scores(self, x):  # (B, T, C) -> (B, heads, T, head_size)
        x = x.view(x.size()[:-1] + (self.num_attention_heads, self.attention_head_size))
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask):
        query_layer = self.transpose_for_scores(self.query(hidden_states))
        key_layer = self.transpose_for_scores(self.key(hidden_states))
        value_layer = self.transpose_for_scores(self.value(hidden_states))
        attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(self.attention_head_size)
        attention_scores = attention_scores + attention_mask
        attention_probs = self.dropout(F.softmax(attention_scores, dim=-1))
        context_layer = torch.matmul(attention_probs, value_layer).permute(0, 2, 1, 3).contiguous()
        return context_layer.view(context_layer.size()[:-2] + (self.all_head_size,))


class BertResidualOutput(nn.Module):  # BertSelfOutput and BertOutput: dense, dropout, LayerNorm(x + input)
    def __init__(self, c, width_in):
        super().__init__()
        self.dense = nn.Linear(width_in, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = BertResidualOutput(c, c["hidden_size"])

    def forward(self, hidden_states, attention_mask):
        return self.output(self.self(hidden_states, attention_mask), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, hidden_states):
        return F.gelu(self.dense(hidden_states))  # exact (erf) gelu, transformers' "gelu"


class BertLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = BertResidualOutput(c, c["intermediate_size"])

    def forward(self, hidden_states, attention_mask):
        attention_output = self.attention(hidden_states, attention_mask)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(c) for _ in range(c["num_hidden_layers"])])

    def forward(self, hidden_states, attention_mask):
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask)
        return hidden_states


class BertPooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class BertModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c)
        self.pooler = BertPooler(c)

    def forward(self, input_ids):
        attention_mask = torch.ones_like(input_ids)  # no padding: transformers makes the all-ones mask
        extended = attention_mask[:, None, None, :].to(dtype=self.embeddings.word_embeddings.weight.dtype)
        extended = (1.0 - extended) * torch.finfo(extended.dtype).min
        sequence_output = self.encoder(self.embeddings(input_ids), extended)
        return sequence_output, self.pooler(sequence_output)


class BertForSequenceClassification(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.num_labels = c["num_labels"]
        self.bert = BertModel(c)
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])
        self.classifier = nn.Linear(c["hidden_size"], c["num_labels"])
        self.apply(lambda m: init_weights(m, c["initializer_range"]))

    def forward(self, input_ids, labels):
        _, pooled_output = self.bert(input_ids)
        logits = self.classifier(self.dropout(pooled_output))
        return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1)), logits


# ---------------------------------------------------------------------------------------------------
# GPT-2 (GPT2LMHeadModel)


class Conv1D(nn.Module):  # transformers.pytorch_utils.Conv1D: a Linear with its weight stored (in, out)
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


def gelu_new(x):  # transformers.activations.NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        max_positions = c["n_positions"]
        self.register_buffer(
            "bias",
            torch.tril(torch.ones((max_positions, max_positions), dtype=torch.bool)).view(
                1, 1, max_positions, max_positions),
            persistent=False)
        self.embed_dim = c["n_embd"]
        self.num_heads = c["n_head"]
        self.head_dim = self.embed_dim // self.num_heads
        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(c["attn_pdrop"])
        self.resid_dropout = nn.Dropout(c["resid_pdrop"])

    def _split_heads(self, tensor):  # (B, T, C) -> (B, heads, T, head_dim)
        tensor = tensor.view(tensor.size()[:-1] + (self.num_heads, self.head_dim))
        return tensor.permute(0, 2, 1, 3)

    def _merge_heads(self, tensor):  # (B, heads, T, head_dim) -> (B, T, C)
        tensor = tensor.permute(0, 2, 1, 3).contiguous()
        return tensor.view(tensor.size()[:-2] + (self.num_heads * self.head_dim,))

    def _attn(self, query, key, value):
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        attn_weights = attn_weights / torch.full(
            [], value.size(-1) ** 0.5, dtype=attn_weights.dtype, device=attn_weights.device)
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length:key_length, :key_length]
        mask_value = torch.finfo(attn_weights.dtype).min
        mask_value = torch.full([], mask_value, dtype=attn_weights.dtype).to(attn_weights.device)
        attn_weights = torch.where(causal_mask, attn_weights.to(attn_weights.dtype), mask_value)
        attn_weights = self.attn_dropout(F.softmax(attn_weights, dim=-1))
        return torch.matmul(attn_weights, value)

    def forward(self, hidden_states):
        query, key, value = self.c_attn(hidden_states).split(self.embed_dim, dim=2)
        attn_output = self._attn(self._split_heads(query), self._split_heads(key), self._split_heads(value))
        return self.resid_dropout(self.c_proj(self._merge_heads(attn_output)))


class GPT2MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = Conv1D(4 * c["n_embd"], c["n_embd"])
        self.c_proj = Conv1D(c["n_embd"], 4 * c["n_embd"])
        self.dropout = nn.Dropout(c["resid_pdrop"])

    def forward(self, hidden_states):
        return self.dropout(self.c_proj(gelu_new(self.c_fc(hidden_states))))


class GPT2Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c["n_embd"], eps=c["layer_norm_epsilon"])
        self.attn = GPT2Attention(c)
        self.ln_2 = nn.LayerNorm(c["n_embd"], eps=c["layer_norm_epsilon"])
        self.mlp = GPT2MLP(c)

    def forward(self, hidden_states):
        hidden_states = self.attn(self.ln_1(hidden_states)) + hidden_states
        return self.mlp(self.ln_2(hidden_states)) + hidden_states


class GPT2Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte = nn.Embedding(c["vocab_size"], c["n_embd"])
        self.wpe = nn.Embedding(c["n_positions"], c["n_embd"])
        self.drop = nn.Dropout(c["embd_pdrop"])
        self.h = nn.ModuleList([GPT2Block(c) for _ in range(c["n_layer"])])
        self.ln_f = nn.LayerNorm(c["n_embd"], eps=c["layer_norm_epsilon"])

    def forward(self, input_ids):
        position_ids = torch.arange(0, input_ids.size(-1), dtype=torch.long).unsqueeze(0)
        hidden_states = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        for block in self.h:
            hidden_states = block(hidden_states)
        return self.ln_f(hidden_states)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.transformer = GPT2Model(c)
        self.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        self.apply(lambda m: init_weights(m, c["initializer_range"]))
        for name, p in self.named_parameters():  # GPT-2 paper: residual projections / sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                p.data.normal_(mean=0.0, std=c["initializer_range"] / math.sqrt(2 * c["n_layer"]))
        self.lm_head.weight = self.transformer.wte.weight  # tie_weights()

    def forward(self, input_ids, labels):
        lm_logits = self.lm_head(self.transformer(input_ids))
        shift_logits = lm_logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        return loss, lm_logits


def init_weights(module, std):  # BertPreTrainedModel / GPT2PreTrainedModel._init_weights
    if isinstance(module, (nn.Linear, Conv1D)):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(mean=0.0, std=std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)


BERT_TINY = dict(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, num_labels=2,
                 initializer_range=0.02)
GPT2_TINY = dict(vocab_size=50257, n_positions=256, n_embd=128, n_layer=2, n_head=2, resid_pdrop=0.1,
                 embd_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5, initializer_range=0.02)


BERT_BASE = dict(BERT_TINY, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


class LoraLinear(nn.Module):
    """PEFT v0.5's tuners/lora Linear, re-written (peft is not installed): the base Linear frozen beside
    y = base(x) + lora_B(lora_A(dropout(x))) * scaling; A Kaiming-uniform (a = sqrt(5)), B zeros."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout)
        self.scaling = alpha / r

    def forward(self, x):
        result = F.linear(x, self.base.weight, bias=self.base.bias)
        return result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def apply_lora(model, r):
    """get_peft_model with LoraConfig(r, lora_alpha=r, lora_dropout=0.1, target_modules=["query", "value"],
    task_type SEQ_CLS): query and value adapted, everything else frozen but the classifier."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in list(model.modules()):
        for name in ("query", "value"):
            if isinstance(getattr(module, name, None), nn.Linear):
                setattr(module, name, LoraLinear(getattr(module, name), r, r, 0.1))
    for p in model.classifier.parameters():
        p.requires_grad_(True)


def train(a):
    torch.manual_seed(a.seed)
    if a.mode == "train-bert":
        config = BERT_BASE if a.size == "base" else BERT_TINY
        model = BertForSequenceClassification(config)
        input_ids = torch.randint(config["vocab_size"], (a.batch, a.seq))
        labels = torch.randint(2, (a.batch,))
        if a.lora:
            apply_lora(model, a.lora)
    else:
        model = GPT2LMHeadModel(GPT2_TINY)
        input_ids = torch.randint(GPT2_TINY["vocab_size"], (a.batch, a.seq))
        labels = input_ids
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    phase_ms = {"zero_grad": [], "forward": [], "backward": [], "optimizer": []}

    def step(record=True):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        t1 = time.perf_counter()
        loss, _ = model(input_ids, labels)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if record:
            for name, begin, end in zip(phase_ms, (t0, t1, t2, t3), (t1, t2, t3, t4)):
                phase_ms[name].append((end - begin) * 1e3)
        return loss.item()

    first_loss = last_loss = 0.0
    for i in range(a.warmup):
        loss = step(record=False)
        if i == 0:
            first_loss = loss
    windows, done = [], 0
    profiler = torch.profiler.profile() if a.profile else None  # operator profile of the timed steps
    if profiler:
        profiler.__enter__()
    while done < a.steps:
        count = min(a.window, a.steps - done)
        start = time.perf_counter()
        for _ in range(count):
            last_loss = step()
        windows.append(count / (time.perf_counter() - start))
        done += count
    if profiler:
        profiler.__exit__(None, None, None)
        profiler.export_chrome_trace(a.profile)
    return dict(model=a.mode[len("train-"):] + ("-base" if a.size == "base" else ""),
                parameters=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad), lora=a.lora,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                batch=a.batch, seq=a.seq, threads=torch.get_num_threads(), steps=a.steps, warmup=a.warmup,
                window_steps_per_s=windows, steps_per_s=statistics.median(windows),
                phase_ms={name: statistics.median(ms) for name, ms in phase_ms.items()},
                first_loss=first_loss, last_loss=last_loss)


# ---------------------------------------------------------------------------------------------------
# Tokenizer (tiktoken, when bench/text could install it)


def split_chunks(data, size):  # the same split as graft_text_bench and reference_tokenize.cjs
    chunks, pos = [], 0
    while pos < len(data):
        end = len(data)
        if pos + size < len(data):
            newline = data.find(b"\n", pos + size)
            if newline >= 0:
                end = newline + 1
        chunks.append(data[pos:end])
        pos = end
    return chunks


def tokenize(a):
    sys.path.insert(0, a.tiktoken_dir)
    import tiktoken

    # GPT-2's ranks are its encoder.json ids, keyed by each token's bytes (tiktoken's
    # data_gym_to_mergeable_bpe_ranks checks exactly that); read here so that no URL or blobfile is needed.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    byte_of, extra = {}, 0
    for b in range(256):  # OpenAI's bytes_to_unicode, inverted
        byte_of[chr(b) if b in printable else chr(256 + extra)] = b
        extra += b not in printable
    with open(a.tokenizer + "/encoder.json", encoding="utf-8") as f:
        encoder = json.load(f)
    ranks = {bytes(byte_of[ch] for ch in token): rank for token, rank in encoder.items()
             if token != "<|endoftext|>"}
    # tiktoken_ext/openai_public.py's gpt2 definition, with the ranks from disk instead of a URL.
    encoding = tiktoken.Encoding(
        name="gpt2", explicit_n_vocab=50257,
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    with open(a.file, "rb") as f:
        data = f.read()
    chunks = [c.decode("utf-8") for c in split_chunks(data, a.chunk)]

    def one_pass(keep):
        ids, count = [], 0
        start = time.perf_counter()
        for chunk in chunks:
            out = encoding.encode_ordinary(chunk)
            count += len(out)
            if keep:
                ids.extend(out)
        return time.perf_counter() - start, count, ids

    first_s, tokens, ids = one_pass(True)
    passes = [one_pass(False)[0] for _ in range(a.repeat)]
    if a.dump_ids:
        with open(a.dump_ids, "w") as f:
            f.write("".join("%d\n" % i for i in ids))
    mb = len(data) / 1e6
    return dict(bytes=len(data), chunks=len(chunks), tokens=tokens, first_pass_s=first_s,
                first_mb_per_s=mb / first_s, median_s=statistics.median(passes),
                mb_per_s=mb / statistics.median(passes), repeat=a.repeat, version=tiktoken.__version__)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train-bert", "train-gpt2", "tokenize"])
    p.add_argument("file", nargs="?")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", help="write a Chrome trace of the timed training steps here")
    p.add_argument("--size", choices=["tiny", "base"], default="tiny", help="train-bert: BERT-tiny or BERT-base")
    p.add_argument("--lora", type=int, default=0, help="train-bert: LoRA of this rank on query and value")
    p.add_argument("--tiktoken-dir")
    p.add_argument("--tokenizer")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--dump-ids")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(json.dumps(tokenize(a) if a.mode == "tokenize" else train(a)))


if __name__ == "__main__":
    main()
