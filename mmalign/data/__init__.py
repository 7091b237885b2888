"""Preference data: readers (Pick-a-Pic parquet, JSONL manifests), builders from scorers, latent caches."""

from mmalign.data.pairs import Pair, PairDataset, Ranking, RankingDataset, read_manifest, read_pickapic, read_preferences

__all__ = ["Pair", "PairDataset", "Ranking", "RankingDataset", "read_manifest", "read_pickapic", "read_preferences"]
