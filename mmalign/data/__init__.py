"""Preference data: one pair and one ranking schema (readers for JSONL manifests and Pick-a-Pic parquet),
prompt files and shipped prompt sets, builders from scorers, latent caches."""

from mmalign.data.pairs import Pair, PairDataset, Ranking, RankingDataset, read_manifest, read_pickapic, read_preferences
from mmalign.data.prompts import prompt_sets, read_prompts

__all__ = ["Pair", "PairDataset", "Ranking", "RankingDataset", "read_manifest", "read_pickapic", "read_preferences",
           "prompt_sets", "read_prompts"]
