"""Moved to :mod:`marginface.experiments.demo` (the app layer); this path is kept for one release."""

# moved to marginface.experiments.demo; kept for one release
from marginface.experiments.demo import (  # noqa: F401
    BEFORE_FILE,
    DEMO,
    DONE_FILE,
    DemoTrainer,
    cpu_has_fast_bf16,
    demo_config,
    demo_state,
    run_demo,
    write_demo_figures,
)
