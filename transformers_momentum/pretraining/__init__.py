"""Pretraining recipe for MomentumGPT checkpoints: tokenizer, packing, Trainer, perplexity, model cards."""

from .data import END_OF_TEXT, iter_documents, pack_documents, token_stream, train_bpe_tokenizer
from .evaluation import mean_and_t_interval, perplexity_at_lengths
from .recipe import PretrainArguments, build_model, count_parameters, pretrain

__all__ = [
    "END_OF_TEXT",
    "PretrainArguments",
    "build_model",
    "count_parameters",
    "iter_documents",
    "mean_and_t_interval",
    "pack_documents",
    "perplexity_at_lengths",
    "pretrain",
    "token_stream",
    "train_bpe_tokenizer",
]
