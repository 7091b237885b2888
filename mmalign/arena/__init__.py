"""The arena: people rank K samples at once in a web page; K-wise Bayesian ratings; votes become training data.

:mod:`~mmalign.arena.ranking` (the update, matchmaking, Elo and Bradley–Terry), :mod:`~mmalign.arena.store`
(SQLite / PostgreSQL), :mod:`~mmalign.arena.service` (ratings over the store, matches),
:mod:`~mmalign.arena.app` (the web page and API), :mod:`~mmalign.arena.export` (pairs and rankings files),
:mod:`~mmalign.arena.agreement` (scorers against votes) and :mod:`~mmalign.arena.simulate` (convergence
with simulated annotators). The web and database parts need ``pip install "mmalign[arena]"``.
"""
