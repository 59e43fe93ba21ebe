"""Moved to :mod:`marginface.experiments.study` (the app layer); this path is kept for one release."""

# moved to marginface.experiments.study; kept for one release
from marginface.experiments.study import (  # noqa: F401
    BASE_COLUMNS,
    SET_FIELDS,
    ArmSummary,
    Comparison,
    Run,
    Study,
    StudySpec,
    arms_figure,
    columns,
    compare,
    environments,
    eval_device,
    final_checkpoint,
    finished,
    load_study,
    plan,
    read_results,
    run_child,
    status,
    summarise,
    summary_table,
    train_command,
)

