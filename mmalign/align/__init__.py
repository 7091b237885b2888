"""Alignment: preference losses (Diffusion-DPO, RankDPO, LiPO-λ, SFT), recipes and the trainer."""
