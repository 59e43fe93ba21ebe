"""Moved to :mod:`marginface.experiments.search` (the app layer); this path is kept for one release."""

# moved to marginface.experiments.search; kept for one release
from marginface.experiments.search import (  # noqa: F401
    PARTS,
    STATE_FILE,
    SearchConfig,
    SearchSettings,
    SearchState,
    Workers,
    compare_from_scratch,
    identity_mean,
    load_search_config,
    load_state,
    normalise_rewards,
    parameter_layout,
    read_search,
    reinforce_update,
    run_round,
    run_search,
    save_state,
    score_search_model,
    search_reward,
    search_test_sets,
    train_copy,
    unpack,
    write_log,
)
