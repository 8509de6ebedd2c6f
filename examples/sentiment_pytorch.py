#!/usr/bin/env python3
"""The sentiment example's pipeline in PyTorch (CPU), for comparison with examples/sentiment.rs.

With --load DIR it instead loads the model the Rust example saved (DIR/sentiment.safetensors,
PyTorch's names, and DIR/vocab.txt) into the same PyTorch modules with load_state_dict and
reports its test accuracy.

Same data, tokeniser, vocabulary, GloVe initialisation, bucketing, model (embedding ->
bidirectional LSTM/GRU over packed batches -> linear head on the two final states), loss
(BCE with logits), optimiser (Adam), learning-rate schedule and clipping as the Rust example. Prints per-epoch
time and test accuracy, and the same in JSON with --json.

    python3 examples/sentiment_pytorch.py --epochs 6 --threads 2
    python3 examples/sentiment_pytorch.py --load target/sentiment
"""
import argparse, csv, json, os, random, re, sys, time

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


def tokens(text):
    return TOKEN.findall(text.replace("<br />", " ").lower())


def read(name):
    with open(os.path.join(DATA, name), newline="", encoding="utf-8") as f:
        return [(tokens(r["text"]), int(r["label"])) for r in csv.DictReader(f)]


class Model(nn.Module):
    """embedding -> bidirectional LSTM/GRU (packed) -> linear head on the two final states."""

    def __init__(self, vocab, cell, hidden, dropout):
        super().__init__()
        self.cell = cell
        self.embedding = nn.Embedding(vocab, 50, padding_idx=0)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(50, hidden, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, lens):
        packed = pack_padded_sequence(self.drop(self.embedding(x)), lens, enforce_sorted=False)
        _, hn = self.rnn(packed)
        h = hn[0] if self.cell == "lstm" else hn
        return self.head(torch.cat([h[-2], h[-1]], dim=1)).squeeze(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--keep", default="tail", choices=["head", "tail"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--min-count", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training reviews")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--load", help="evaluate the Rust example's saved model in this folder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)

    train = read("imdb_reviews_train_1.csv") + read("imdb_reviews_train_2.csv")
    if a.limit > 0:
        train = train[: a.limit]
    test = read("imdb_reviews_test.csv")
    counts = {}
    for toks, _ in train:
        for t in toks:
            counts[t] = counts.get(t, 0) + 1
    if a.load:
        with open(os.path.join(a.load, "vocab.txt"), encoding="utf-8") as f:
            itos = f.read().split("\n")[:-1]
    else:
        itos = ["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= a.min_count)
    stoi = {w: i for i, w in enumerate(itos)}

    def encode(toks):
        ids = [stoi.get(t, 1) for t in toks] or [1]
        return ids[-a.max_len:] if a.keep == "tail" else ids[: a.max_len]

    train = [(encode(t), y) for t, y in train]
    test = [(encode(t), y) for t, y in test]

    model = Model(len(itos), a.cell, a.hidden, a.dropout)
    emb, rnn, head = model.embedding, model.rnn, model.head
    nn.init.normal_(emb.weight, 0.0, 0.1)
    found = 0
    with torch.no_grad():
        emb.weight[0].zero_()
        with open(os.path.join(DATA, "glove.6B.50d.10k.txt"), encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip().split(" ")
                i = stoi.get(parts[0])
                if i is not None and i > 1:
                    emb.weight[i] = torch.tensor([float(x) for x in parts[1:]])
                    found += 1
        if a.cell == "lstm":  # forget-gate bias 1 (split between b_ih and b_hh)
            for name, p in rnn.named_parameters():
                if name.startswith("bias"):
                    p[a.hidden : 2 * a.hidden].fill_(0.5)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)
    # As the Rust example's --lr-schedule cosine: from --lr to 0 over all batches, stepped once a batch.
    per_epoch = (len(train) + a.batch - 1) // a.batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs * per_epoch) if a.lr_schedule == "cosine" else None
    print(f"vocabulary {len(itos)} ({found} from GloVe), train {len(train)}, test {len(test)}", file=sys.stderr)

    def batches(data, shuffle):
        order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
        bs = [order[i : i + a.batch] for i in range(0, len(order), a.batch)]
        if shuffle:
            rng.shuffle(bs)
        for b in bs:
            seqs = [data[i][0] for i in b]
            lens = torch.tensor([len(s) for s in seqs])
            x = torch.zeros(max(lens), len(b), dtype=torch.long)
            for j, s in enumerate(seqs):
                x[: len(s), j] = torch.tensor(s)
            yield x, lens, torch.tensor([float(data[i][1]) for i in b])

    def accuracy():
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, lens, y in batches(test, False):
                correct += int(((model(x, lens) > 0).float() == y).sum())
        return correct / len(test)

    if a.load:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(os.path.join(a.load, "sentiment.safetensors")))
        print(f"loaded {a.load}/sentiment.safetensors with load_state_dict: test accuracy {accuracy():.4f}")
        return

    lossf = nn.BCEWithLogitsLoss()
    records = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total, n = 0.0, 0
        for x, lens, y in batches(train, True):
            opt.zero_grad()
            loss = lossf(model(x, lens), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            if sched is not None:
                sched.step()
            total += loss.item() * len(y)
            n += len(y)
        secs = time.perf_counter() - t0
        acc = accuracy()
        print(f"epoch {epoch}: train loss {total / n:.4f}, {secs:.1f} s, test accuracy {acc:.4f}", flush=True)
        records.append({"epoch": epoch, "train_loss": total / n, "epoch_s": secs, "test_accuracy": acc})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"framework": f"pytorch {torch.__version__}", "threads": a.threads, "args": vars(a), "epochs": records}, f, indent=1)


if __name__ == "__main__":
    main()
