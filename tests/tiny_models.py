"""Tiny Hugging Face models built from configs, saved as real folders (weights, config, tokenizer).

Used by the library and service tests: a BERT-style backbone with a fine-tuned sequence classifier,
and a GPT-2 style (Conv1D, transposed weights) pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    PreTrainedTokenizerFast,
)

from ken.pooling import Pooling, write_sentence_transformers_files

WORDS = (
    "the a of and to in is it that was for on are with as i his they be at one have this from or had by "
    "goal match team win score player league cup market shares profit bank economy growth film music "
    "actor award song band election minister vote party government phone software internet computer data"
).split()
LABELS = ("sport", "business", "culture")


@dataclass(frozen=True)
class TinyPair:
    base: Path
    finetuned: Path


def write_vocab(folder: Path) -> Path:
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return vocab


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    """Change every weight a little, as a fine-tune would (some embedding rows stay untouched)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * scale
            if "word_embeddings" in name or name.endswith("wte.weight"):
                noise[param.shape[0] // 2 :] = 0
            param.add_(noise)


def make_bert_pair(root: Path, *, seed: int = 0, num_labels: int = 3, hidden: int = 32) -> TinyPair:
    """A tiny BERT backbone folder and a fine-tuned sequence-classification folder over it."""
    torch.manual_seed(seed)
    base_dir, ft_dir = root / "base", root / "finetuned"
    base_dir.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(base_dir)
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    labels = {i: LABELS[i % len(LABELS)] + ("" if i < len(LABELS) else str(i)) for i in range(num_labels)}
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    base = BertModel(config).eval()
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    finetuned = BertForSequenceClassification(config)
    finetuned.bert.load_state_dict(base.state_dict())
    perturb(finetuned, seed + 1)
    finetuned.save_pretrained(ft_dir)
    tokenizer.save_pretrained(ft_dir)
    return TinyPair(base_dir, ft_dir)


def make_gpt2_pair(root: Path, *, seed: int = 0, num_labels: int = 2) -> TinyPair:
    """A tiny GPT-2 backbone (Conv1D weights stored [in, out]) and a fine-tuned classifier."""
    torch.manual_seed(seed)
    base_dir, ft_dir = root / "base", root / "finetuned"
    config = GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=24,
        n_layer=2,
        n_head=2,
        num_labels=num_labels,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    base = GPT2Model(config).eval()
    base.save_pretrained(base_dir)
    finetuned = GPT2ForSequenceClassification(config)
    finetuned.transformer.load_state_dict(base.state_dict())
    perturb(finetuned, seed + 1)
    finetuned.save_pretrained(ft_dir)
    return TinyPair(base_dir, ft_dir)


NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG")
#: What sentence-transformers (v4, v5) writes into a CrossEncoder's config.json.
CROSS_ENCODER_MARK = {"activation_fn": "torch.nn.modules.activation.Sigmoid", "version": "5.0.0"}


def make_bert_task(base_dir: Path, out_dir: Path, task_type: str, *, seed: int = 3) -> Path:
    """A fine-tune of the tiny BERT backbone at ``base_dir`` for ``task_type``, saved as a real folder.

    ``token-classification``: a 5-label NER tagger; ``pair-scoring``: a one-score cross-encoder (marked
    as sentence-transformers marks one); ``feature-extraction``: a bare ``BertModel`` with
    sentence-transformers files (mean pooling, normalised).
    """
    base = BertModel.from_pretrained(base_dir)
    config = BertConfig.from_pretrained(base_dir)
    if task_type == "feature-extraction":
        model: torch.nn.Module = BertModel(config)
        model.load_state_dict(base.state_dict())
    else:
        labels = NER_LABELS if task_type == "token-classification" else ("score",)
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        if task_type == "token-classification":
            model = BertForTokenClassification(config)
        else:
            config.sentence_transformers = dict(CROSS_ENCODER_MARK)
            model = BertForSequenceClassification(config)
        # a token classifier's BERT has no pooler: strict=False leaves the backbone's pooler out
        model.bert.load_state_dict(base.state_dict(), strict=task_type != "token-classification")
    perturb(model, seed, scale=0.05)
    model.save_pretrained(out_dir)
    BertTokenizerFast.from_pretrained(base_dir).save_pretrained(out_dir)
    if task_type == "feature-extraction":
        write_sentence_transformers_files(out_dir, Pooling(mode="mean", normalize=True), config.hidden_size)
    return out_dir


def make_gpt2_lm_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the tiny word list (GPT-2 style; <|endoftext|> is id 0)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS[i : i + 8]) for i in range(0, len(WORDS), 4)]
    bpe.train_from_iterator(corpus, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", model_max_length=64
    )


def make_gpt2_lm_pair(root: Path, *, seed: int = 0, finetunes: int = 2) -> tuple[Path, list[Path]]:
    """A tiny GPT-2 backbone with a tokenizer, and ``finetunes`` causal-LM fine-tunes of it (tied output layer)."""
    torch.manual_seed(seed)
    base_dir = root / "base"
    tokenizer = make_gpt2_lm_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    base = GPT2Model(config).eval()
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    folders = []
    for index in range(finetunes):
        folder = root / f"lm-{index}"
        finetuned = GPT2LMHeadModel(config)
        finetuned.transformer.load_state_dict(base.state_dict())
        perturb(finetuned, seed + 1 + index, scale=0.5)  # large enough that the tasks generate different text
        finetuned.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return base_dir, folders
