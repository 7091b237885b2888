"""The scripts that train the shipped models of ``assets/models/`` (seeded, CPU, resumable).

Each writes exactly the folder its preset loads (``assets/models/<name>/``), with ``eval.json`` (the
held-out evaluation) next to the model, and keeps its resumable state in ``assets/models/<name>.work/``:

    python -m mmalign.zoo.make_tokenizer                    # assets/tokenizers/clip-synth, t5-synth
    python -m mmalign.zoo.train_sdxl                        # synth-sdxl
    python -m mmalign.zoo.train_video                       # synth-video
    python -m mmalign.zoo.train_audio                       # synth-audio
    python -m mmalign.zoo.train_scorers --scorer synth-hps  # synth-hps (and synth-clap)

Nothing in mmalign imports this package; it may import everything.
"""
