"""The jobs: one module per command, each a thin ``main`` over pipeline (flags, config, session, exit code).

Installed as console scripts (pyproject.toml ``[project.scripts]``): camenn-demo-data, camenn-ingest,
camenn-train, camenn-evaluate, camenn-score, camenn-report. ``jobs/*.py`` at the repository root
are the same jobs for ``spark-submit``, which wants a file.
"""
