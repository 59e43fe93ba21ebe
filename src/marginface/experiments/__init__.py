"""The app layer: experiments built on the library through its public surfaces — the AM-LFS loss search
(``search``), studies of arms x seeds (``study``, ``study_stats``, ``study_worker``; issue 30's embedding-block
fine-tuning runner ``embedding_block_study``), the demo (``demo``).

Above training, evaluation, analysis and the rest (it may import any of them); nothing but the command line
imports it. The trainer is driven through its public surface only (``training/trainer.py``: callbacks,
``evaluate``, ``snapshot`` / ``restore``, ``run_steps``, ``Trainer(dataset=...)``).
"""
