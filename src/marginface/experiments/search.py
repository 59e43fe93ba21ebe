"""AM-LFS: search the loss function with REINFORCE while training (Li et al., ICCV 2019; docs/amlfs.md).

The bilevel problem: the inner level trains the network with a loss sampled from the search space (one
:class:`marginface.losses.amlfs.AMLFSLoss` per sample), the outer level maximises the expected validation reward
over the Gaussian distribution N(mu, sigma^2 I) of the loss parameters theta, sigma fixed. Per round t:

1. draw theta_1..theta_B ~ N(mu_t, sigma^2 I);
2. train B copies of the model, each from the round's common weights w_t, for ``steps_per_round`` steps with
   its loss theta_i; the reward R(theta_i) is the copy's verification accuracy on held-out identities;
3. normalise the rewards, R^_i = (R_i - mean R) / std R (population std; all equal: no update) — our default
   baseline, as the public reproductions; ``search.reward: raw`` uses R_i as the update is restated from the paper;
4. REINFORCE: mu_{t+1} = mu_t + eta (1/B) sum_i R^_i grad_mu log N(theta_i; mu_t, sigma^2 I)
                        = mu_t + eta (1/B) sum_i R^_i (theta_i - mu_t) / sigma^2;
5. broadcast: w_{t+1} = the weights (and optimizer state) of the copy with the highest reward.

In one process the B copies are advanced **in turn**. That equals the paper's B parallel workers exactly:
every copy starts from the same snapshot (weights, BatchNorm statistics, optimizer momentum, step counter),
reads the same batches with the same flips (the data order is a function of (seed, step) only, see
``training/data.py``), and nothing else in a training step is random, so a copy's result does not depend on
which copies ran before it. The samples theta are drawn from the search's own generator before any training.
Under ``torchrun`` (R processes, R dividing B) each rank draws the same theta and trains the copies i with
i mod R = rank — with R = B, one sample per rank, the paper's setting — on its own (a single-process trainer:
each copy sees the whole batch, as in one process); the rewards are summed over ranks, every rank makes the same
REINFORCE update, and the best copy's weights and optimizer state are broadcast from the rank that trained it.
For the reason above the result equals the one-process search (tested).

The state after every round (mu, the search generator, the broadcast weights and optimizer state, the history
of samples and rewards) is written atomically to ``search_state.safetensors``; a killed search resumes from
the last finished round and gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from marginface.files import atomic_write, atomic_write_text
from marginface.runs.layout import SEARCH_STATE, RunDir
from marginface.training.config import ConfigError, TrainConfig, apply_overrides, build_section, config_from_dict
from marginface.training.distributed import DistInfo, init_from_env
from marginface.training.trainer import Snapshot, Trainer

STATE_FILE = SEARCH_STATE  # moved to marginface.runs.layout; kept for one release
PARTS = ("logit_slopes", "logit_intercepts", "prob_slopes", "prob_intercepts")


# ----------------------------------------------------------------------------- configuration
@dataclass
class SearchSettings:
    """The outer level of AM-LFS (the ``search:`` section of a search preset)."""

    rounds: int = 10
    """Rounds t of sample -> train B copies -> reward -> update -> broadcast."""
    samples: int = 4
    """B, the loss samples (model copies) per round."""
    steps_per_round: int = 50
    """Training steps of every copy per round (the paper: one epoch)."""
    sigma: float = 0.2
    """The fixed standard deviation of every searched parameter."""
    lr: float = 0.05
    """eta, the step size of the REINFORCE update of the means. 0 is the control without learning: every round
    samples around the identity and still broadcasts the best copy (what the best-of-B choice alone gives)."""
    logit_intervals: int = 6
    """M, the intervals of t on the cosine [-1, 1]."""
    prob_intervals: int = 6
    """K, the intervals of tau on the target probability [0, 1]."""
    space: str = "both"
    """Which transforms are searched: 'logit' (t), 'prob' (tau) or 'both'; the others stay the identity."""
    seed: int = 0
    """Seed of the search's generator (the samples theta)."""
    reward: str = "normalised"
    """The REINFORCE weights: 'normalised' (R - mean R) / std R, or 'raw' R (docs/amlfs.md: which is the paper's)."""

    def __post_init__(self) -> None:
        for name in ("rounds", "samples", "steps_per_round", "logit_intervals", "prob_intervals"):
            if getattr(self, name) < 1:
                raise ConfigError(f"search.{name} must be >= 1, got {getattr(self, name)}")
        if self.samples < 2:
            raise ConfigError(f"search.samples must be >= 2 (rewards are normalised over the samples), "
                              f"got {self.samples}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)) or not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ConfigError(f"search.sigma must be positive and search.lr >= 0, got {self.sigma}, {self.lr}")
        if self.space not in ("logit", "prob", "both"):
            raise ConfigError(f"search.space must be 'logit', 'prob' or 'both', got {self.space!r}")
        if self.reward not in ("normalised", "raw"):
            raise ConfigError(f"search.reward must be 'normalised' or 'raw', got {self.reward!r}")


@dataclass
class SearchConfig:
    """A training config (its ``loss.name`` is 'amlfs') and the search settings."""

    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self) -> None:
        if self.train.loss.name != "amlfs":
            raise ConfigError(f"a search trains with loss.name 'amlfs', got {self.train.loss.name!r}")
        if not (self.train.validation.synthetic_pairs or self.train.validation.bins):
            raise ConfigError("a search needs a validation set for its rewards: set validation.synthetic_pairs "
                              "(held-out synthetic identities) or validation.bins")
        if self.train.loss.sharded:
            raise ConfigError("loss.sharded is not supported by the search (one process advances the B copies)")
        sampled = set(PARTS) & set(self.train.loss.params)
        if sampled:
            raise ConfigError(f"loss.params {sorted(sampled)} are what the search samples; remove them")


def load_search_config(path: str | Path, overrides: list[str] | None = None) -> SearchConfig:
    """A :class:`SearchConfig` from a YAML preset: the training sections plus ``search:``; ``steps`` is derived."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search config {path} does not exist; presets live in configs/")
    values = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    settings = build_section(SearchSettings, values.pop("search", {}) or {}, "search.")
    values["steps"] = settings.rounds * settings.steps_per_round  # the schedule spans the whole search
    values.pop("epochs", None)
    return SearchConfig(train=config_from_dict(values), search=settings)


# ----------------------------------------------------------------------------- the controller
def parameter_layout(settings: SearchSettings) -> list[tuple[str, int]]:
    """(part, size) of the searched vector theta, in order."""
    parts = []
    if settings.space in ("logit", "both"):
        parts += [("logit_slopes", settings.logit_intervals), ("logit_intercepts", settings.logit_intervals)]
    if settings.space in ("prob", "both"):
        parts += [("prob_slopes", settings.prob_intervals), ("prob_intercepts", settings.prob_intervals)]
    return parts


def identity_mean(settings: SearchSettings) -> torch.Tensor:
    """(P,) float64 mu_0: every slope 1 and intercept 0, i.e. plain normalised softmax."""
    return torch.cat([torch.full((n,), 1.0 if part.endswith("slopes") else 0.0, dtype=torch.float64)
                      for part, n in parameter_layout(settings)])


def unpack(theta: torch.Tensor, settings: SearchSettings) -> dict[str, list[float]]:
    """The loss parameters (``AMLFSLoss.set_transform`` keywords) of a vector theta (P,)."""
    out, offset = {}, 0
    for part, n in parameter_layout(settings):
        out[part] = [float(v) for v in theta[offset:offset + n]]
        offset += n
    return out


def normalise_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """(B,) (R - mean R) / std R with the population std; zeros when every reward is the same."""
    rewards = rewards.to(torch.float64)
    std = rewards.std(unbiased=False)
    if not std > 0:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / std


def reinforce_update(mean: torch.Tensor, samples: torch.Tensor, rewards: torch.Tensor, sigma: float,
                     lr: float, reward: str = "normalised") -> torch.Tensor:
    """mu + lr (1/B) sum_i R^_i (theta_i - mu) / sigma^2: one REINFORCE ascent step.

    ``mean`` (P,), ``samples`` (B, P), ``rewards`` (B,) raw; (theta - mu)/sigma^2 is grad_mu log N(theta; mu, sigma^2).
    ``reward``: "normalised" uses R^ = (R - mean R) / std R (a baseline: what the public reproductions do), "raw"
    uses R itself (the update as the paper's equation is restated in secondary sources; see docs/amlfs.md).
    """
    advantage = normalise_rewards(rewards) if reward == "normalised" else rewards.to(torch.float64)
    gradient = (advantage[:, None] * (samples.to(torch.float64) - mean) / sigma ** 2).mean(dim=0)
    return mean + lr * gradient


# ----------------------------------------------------------------------------- the search loop
@dataclass
class SearchState:
    """Everything a round needs besides the model: the controller's mean, its generator and the history."""

    round: int
    mean: torch.Tensor
    generator: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)


def train_copy(trainer: Trainer, first_step: int, steps: int) -> float:
    """Advance the trainer's model ``steps`` steps from global step ``first_step``; returns the mean loss
    (``Trainer.run_steps``: training mode, ``model.freeze_bn`` holds)."""
    return trainer.run_steps(steps, start=first_step)


def search_reward(trainer: Trainer) -> float:
    """R: mean 10-fold verification accuracy over the trainer's validation sets, without flip TTA (half the cost
    of ``Trainer.validate``; the reward only ranks the B copies)."""
    return trainer.evaluate(flip=False).mean_accuracy


def run_round(trainer: Trainer, config: SearchConfig, state: SearchState, group: Workers | None = None) -> SearchState:
    """One round: sample B losses, train B copies (this process's share of them, in turn), reward, REINFORCE,
    broadcast the best copy."""
    s, group = config.search, group or Workers()
    samples = state.mean + s.sigma * torch.randn(s.samples, state.mean.numel(), generator=state.generator,
                                                 dtype=torch.float64)
    start, first_step = trainer.snapshot(), state.round * s.steps_per_round
    rewards, losses_ = torch.zeros(s.samples, dtype=torch.float64), torch.zeros(s.samples, dtype=torch.float64)
    best = None
    for i in group.mine(s.samples):
        trainer.restore(start)
        trainer.loss.set_transform(**unpack(samples[i], s))
        losses_[i] = train_copy(trainer, first_step, s.steps_per_round)
        rewards[i] = search_reward(trainer)
        if best is None or rewards[i] > rewards[best[0]]:
            best = (i, trainer.snapshot())
    rewards, losses_ = group.sum(rewards), group.sum(losses_)
    winner = int(rewards.argmax())  # the first of equal rewards, on every rank alike
    new_mean = reinforce_update(state.mean, samples, rewards, s.sigma, s.lr, s.reward)
    if group.owner(winner) == group.rank:
        # the winner is the first index with the highest reward, so its owner kept it as its own best copy
        # (summing zeros leaves every reward exact)
        assert best is not None and best[0] == winner, (best and best[0], winner)
        trainer.restore(best[1])
    # the paper's broadcast of the best model to every copy; every rank trained a copy, so each is at the round's
    # last step already
    group.broadcast_model(trainer, group.owner(winner))
    record = {"round": state.round, "mean_before": state.mean.tolist(), "mean_after": new_mean.tolist(),
              "samples": samples.tolist(), "rewards": rewards.tolist(), "train_losses": losses_.tolist(),
              "best": winner}
    return SearchState(state.round + 1, new_mean, state.generator, [*state.history, record])


@dataclass(frozen=True)
class Workers:
    """The processes sharing a search's copies: one (the default) or torchrun's R, copy i on rank i mod R."""

    rank: int = 0
    world_size: int = 1

    def mine(self, samples: int) -> range:
        return range(self.rank, samples, self.world_size)

    def owner(self, index: int) -> int:
        return index % self.world_size

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Each rank filled its own copies' entries (zeros elsewhere): the sum is every copy's value."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_model(self, trainer: Trainer, source: int) -> None:
        """Every tensor of the weights and the optimizer state from rank ``source`` (same structure everywhere:
        every rank trained at least one copy of the same model)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        tensors = [*trainer.backbone.state_dict().values(), *trainer.loss.state_dict().values()]
        for slots in trainer.optimizer.state.values():
            tensors += [v for v in slots.values() if torch.is_tensor(v)]
        for tensor in tensors:
            dist.broadcast(tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor, src=source)


def save_state(run_dir: Path, trainer: Trainer, state: SearchState) -> None:
    """Atomically write the search state and the broadcast model (one safetensors file)."""
    from safetensors.torch import save_file

    from marginface.training import checkpoint as ckpt

    tensors = {f"model.{k}": v for k, v in ckpt.model_tensors(trainer.backbone, trainer.loss).items()}
    opt_tensors, opt_meta = ckpt.flatten_optimizer(trainer.optimizer.state_dict())
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    tensors["search.mean"] = state.mean.contiguous()
    tensors["search.generator"] = state.generator.get_state()
    meta = {"round": str(state.round), "optimizer": json.dumps(opt_meta), "history": json.dumps(state.history)}
    atomic_write(RunDir(run_dir).search_state, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_state(run_dir: Path, trainer: Trainer, settings: SearchSettings) -> SearchState | None:
    """The saved search state (and the broadcast model at the round's step, restored into ``trainer``), or None
    when there is none."""
    path = RunDir(run_dir).search_state
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    from marginface.training import checkpoint as ckpt

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    if tensors["search.mean"].numel() != identity_mean(settings).numel():
        raise ValueError(f"{path} holds a search over {tensors['search.mean'].numel()} parameters but the config "
                         f"searches {identity_mean(settings).numel()}: use a fresh output_dir (or `fresh=True`)")
    generator = torch.Generator()
    generator.set_state(tensors["search.generator"])
    state = SearchState(int(meta["round"]), tensors["search.mean"].clone(), generator, json.loads(meta["history"]))
    optim = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    trainer.restore(Snapshot(  # the scaler's state is not saved (searches run in fp32 / bf16): empty, left as is
        step=state.round * settings.steps_per_round,
        backbone={k[len("model.backbone."):]: v for k, v in tensors.items() if k.startswith("model.backbone.")},
        loss={k[len("model.loss."):]: v for k, v in tensors.items() if k.startswith("model.loss.")},
        optimizer=ckpt.unflatten_optimizer(optim, json.loads(meta["optimizer"])), scaler={}))
    return state


def write_log(run_dir: Path, settings: SearchSettings, history: list[dict[str, Any]]) -> Path:
    """``search_log.csv`` (``log.csv`` in a search begun before it had its own name): per round, one row per sample
    (parameters, reward) and one for the distribution's mean."""
    names = [f"{part}[{i}]" for part, n in parameter_layout(settings) for i in range(n)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["round", "row", "reward", "train_loss", "best", "sigma", *names])
    for rec in history:
        for i, (theta, reward) in enumerate(zip(rec["samples"], rec["rewards"])):
            writer.writerow([rec["round"], f"sample{i}", f"{reward:.6f}", f"{rec['train_losses'][i]:.6f}",
                             int(i == rec["best"]), "", *[f"{v:.6g}" for v in theta]])
        writer.writerow([rec["round"], "mean_after", "", "", "", settings.sigma,
                         *[f"{v:.6g}" for v in rec["mean_after"]]])
    path = RunDir(run_dir).search_log
    atomic_write_text(path, buffer.getvalue())
    return path


def run_search(config: SearchConfig, max_rounds: int | None = None, progress: bool = True) -> SearchState:
    """Run (or resume) the search in ``config.train.output_dir``; stops after ``max_rounds`` new rounds if given."""
    from tqdm.auto import tqdm

    settings, run_dir = config.search, Path(config.train.output_dir)
    group = _join_workers(config)
    train_cfg = _search_train_config(config)
    if group.rank:  # ranks > 0 train their copies silently; their trainers' start records go to a folder of their own
        train_cfg = dataclasses.replace(train_cfg, output_dir=str(RunDir(run_dir).rank_dir(group.rank)))
    with contextlib.redirect_stdout(io.StringIO()) if group.rank else contextlib.nullcontext():
        trainer = Trainer(train_cfg, dist_info=DistInfo()).setup()  # each process trains whole copies alone
    main = group.rank == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        RunDir(run_dir).search_settings.write_text(json.dumps(dataclasses.asdict(settings), indent=2))
    state = load_state(run_dir, trainer, settings)
    if state is None:
        state = SearchState(0, identity_mean(settings), torch.Generator().manual_seed(settings.seed))
    last = settings.rounds if max_rounds is None else min(settings.rounds, state.round + max_rounds)
    for _ in tqdm(range(state.round, last), desc="search rounds", disable=not (progress and main)):
        state = run_round(trainer, config, state, group)
        if main:
            save_state(run_dir, trainer, state)
            write_log(run_dir, settings, state.history)
        group.barrier()  # the next round (or a resume) reads nothing half-written
    return state


def _search_train_config(config: SearchConfig) -> TrainConfig:
    """The search's training config: the preset with the identity transform (each copy then sets its own)."""
    params = {**config.train.loss.params, **unpack(identity_mean(config.search), config.search)}
    return dataclasses.replace(config.train, loss=dataclasses.replace(config.train.loss, params=params))


def _join_workers(config: SearchConfig) -> Workers:
    """torchrun's processes (each trains B / R copies) or this one; refuses R not dividing B."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Workers()
    if config.search.samples % world:
        raise ConfigError(f"search.samples ({config.search.samples}) must be a multiple of the {world} torchrun "
                          "processes (each trains samples / processes copies; equal: one sample per rank)")
    device = "cuda" if config.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    info = init_from_env(device)
    return Workers(info.rank, info.world_size)


def read_search(run_dir: str | Path, points: int = 181) -> dict[str, Any]:
    """The numbers behind ``search.png``: the mean t (as target logit vs angle) and tau per round, the rewards.

    ``logit_curves[r]`` is ``s t_mu(cos theta)`` for the mean before round r (r = 0: mu_0) and, last, after the
    final round; ``prob_curves`` likewise for tau on ``probs``; ``rewards[r]`` the B rewards of round r.
    """
    from safetensors import safe_open

    from marginface.losses.amlfs import piecewise_linear

    run = RunDir(run_dir)
    settings = SearchSettings(**json.loads(run.search_settings.read_text()))
    with safe_open(str(run.search_state), framework="pt") as handle:
        history = json.loads(handle.metadata()["history"])
    scale = float(run.read_config()["loss"]["params"].get("scale", 64.0))
    means = [rec["mean_before"] for rec in history] + ([history[-1]["mean_after"]] if history else [])
    thetas = torch.linspace(0, math.pi, points, dtype=torch.float64)
    probs = torch.linspace(0, 1, points, dtype=torch.float64)
    logit_curves, prob_curves = [], []
    for mean in means:
        params = unpack(torch.tensor(mean, dtype=torch.float64), settings)
        a = torch.tensor(params.get("logit_slopes", [1.0]), dtype=torch.float64)
        b = torch.tensor(params.get("logit_intercepts", [0.0]), dtype=torch.float64)
        logit_curves.append((scale * piecewise_linear(torch.cos(thetas), a, b, -1.0, 1.0)).tolist())
        alpha = torch.tensor(params.get("prob_slopes", [1.0]), dtype=torch.float64)
        beta = torch.tensor(params.get("prob_intercepts", [0.0]), dtype=torch.float64)
        prob_curves.append(piecewise_linear(probs, alpha, beta, 0.0, 1.0).tolist())
    return {"scale": scale, "thetas_deg": torch.rad2deg(thetas).tolist(), "probs": probs.tolist(),
            "logit_curves": logit_curves, "prob_curves": prob_curves, "prob_searched": settings.space != "logit",
            "rounds": [rec["round"] for rec in history], "rewards": [rec["rewards"] for rec in history]}


def search_test_sets(config: SearchConfig, bins: list[str] | None = None) -> list[tuple[str, torch.Tensor, Any]]:
    """Verification sets for the from-scratch comparison that the search never used as its reward.

    Synthetic data: as many *new* identities as the reward's held-out ones, the next block of the same population
    (training ``0..C-1``, reward ``C..C+V-1``, test ``C+V..C+2V-1``), with as many pairs. Plus every ``.bin`` in
    ``bins`` (e.g. LFW when the reward was a validation split of the training data). Empty when neither applies.
    """
    from marginface.data.bins import load_verification_bin
    from marginface.data.synthetic import synthetic_verification_set

    data, val, sets = config.train.data, config.train.validation, []
    if val.synthetic_pairs:
        images, issame = synthetic_verification_set(
            data.synthetic_identities + val.synthetic_identities, val.synthetic_identities,
            data.synthetic_images_per_identity, val.synthetic_pairs, data.synthetic_seed)
        sets.append(("synthetic_test", images, issame))
    for path in bins or []:
        if any(Path(b).resolve() == Path(path).resolve() for b in val.bins):
            raise ConfigError(f"test set {path} is also a validation set of the search (its reward); a test must be "
                              "a set the search never saw: remove it from validation.bins or from the test sets")
        images, issame = load_verification_bin(path)
        sets.append((Path(path).stem, images, issame))
    return sets


def score_search_model(config: SearchConfig, tests: list[tuple[str, torch.Tensor, Any]]) -> dict[str, float] | None:
    """The search's own model (the last broadcast weights), scored as the from-scratch runs are: mean accuracy
    over the validation (reward) sets and over ``tests``; None before the search has finished.

    AM-LFS learns its loss *during* training, so this model, trained under the searched schedule of losses, is
    what the paper's search produces — beside it, a from-scratch run of the final mean is a different question.
    It had B copies' compute and a best-of-B choice per round on the reward sets: its "validation" accuracy is
    optimistic; only "test" compares fairly with the from-scratch runs.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's start record of a run already reported
        trainer = Trainer(_search_train_config(config), dist_info=DistInfo()).setup()
    state = load_state(Path(config.train.output_dir), trainer, config.search)
    if state is None or state.round < config.search.rounds:
        return None
    scores = {"steps": trainer.step, "validation": trainer.evaluate().mean_accuracy}
    if tests:
        scores["test"] = trainer.evaluate(tests).mean_accuracy
    return scores


def compare_from_scratch(config: SearchConfig, mean: torch.Tensor, seeds: list[int], steps: int,
                         progress: bool = True, test_bins: list[str] | None = None) -> dict[str, Any]:
    """Train the searched mean transform and plain softmax (the identity, same scale) from scratch per seed.

    Each run is ``config.train`` with ``steps`` steps and its own seed (initialisation and data order), under
    ``<output_dir>/retrain/<name>_seed<k>``. Each final model is evaluated (10-fold accuracy, flip TTA) on the
    search's validation sets — the reward's identities, which chose the transform, so optimistic for it — and on
    :func:`search_test_sets`, which the search never saw. The result (also written to ``retrain.json``) holds, per loss
    and per kind ("validation", "test"), each seed's accuracy (mean over the sets), their mean and sample std,
    and the search's own final model scored the same way (:func:`score_search_model`).
    """
    settings, run_dir = config.search, Path(config.train.output_dir)
    tests = search_test_sets(config, test_bins)
    search_model = score_search_model(config, tests)
    candidates = {"searched": unpack(mean, settings), "softmax": unpack(identity_mean(settings), settings)}
    runs: dict[str, dict[str, list[float]]] = {name: {"validation": [], "test": []} for name in candidates}
    for seed in seeds:
        for name, params in candidates.items():
            loss = dataclasses.replace(config.train.loss, params={**config.train.loss.params, **params})
            cfg = dataclasses.replace(config.train, loss=loss, seed=seed, steps=steps,
                                      output_dir=str(RunDir(run_dir).retrain_run(name, seed)))
            trainer = Trainer(cfg, dist_info=DistInfo()).setup()  # one process, even under torchrun
            final = trainer.fit()["final"]
            runs[name]["validation"].append(sum(final.values()) / len(final))
            if tests:  # the same evaluation as the final validation, on other people
                runs[name]["test"].append(trainer.evaluate(tests).mean_accuracy)
            if progress:
                print(f"from scratch, seed {seed}, {name}: validation (reward) accuracy "
                      f"{runs[name]['validation'][-1]:.4f}"
                      + (f", test accuracy {runs[name]['test'][-1]:.4f}" if tests else ""))

    def summary(values: list[float]) -> dict[str, Any]:
        return {"accuracies": values, "mean": sum(values) / len(values),
                "std": float(torch.tensor(values, dtype=torch.float64).std()) if len(values) > 1 else 0.0}

    results = {name: {kind: summary(values) for kind, values in kinds.items() if values}
               for name, kinds in runs.items()}
    result = {"seeds": seeds, "steps": steps, "searched_params": candidates["searched"],
              "test_sets": [name for name, _, _ in tests], "results": results, "search_model": search_model}
    atomic_write_text(RunDir(run_dir).retrain, json.dumps(result, indent=2))
    return result
