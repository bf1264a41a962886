"""SHIP (Wang et al., ICCV 2023): synthesize image features for classes that have no data, from their names.

A VAE over frozen, L2-normalized CLIP image features. The encoder maps a feature to the mean and log-variance of
a latent z; the generator maps z to a bias r that is added to each of L learned global prompt vectors, and the
prompt `[SOS] (p_1+r) .. (p_L+r) <class name> . [EOS]` runs through the frozen CLIP text encoder, whose normalized
output is the reconstructed feature. Loss: summed squared reconstruction error + KL (weight 1), encoder, generator
and prompts trained jointly with AdamW. Sampling z ~ N(0, I) with a class name that has no data gives features
for that class, which are mixed 1:1 with real base-class features to train a method over the joint label space:
`clipadapt run coop+ship` (or `clip_adapter+ship`, `tip_adapter+ship`).

Mirrors mrflogs/SHIP (`main_coop_vae.py`): encoder D -> 2048 (ReLU) -> mean, log-variance of a D-dim latent;
generator z -> 4096 (ReLU) -> text width; 4 prompt vectors from N(0, 0.02); weights N(0, 0.02), biases 0;
AdamW lr 1e-3, batch 256, 50 epochs. Where it differs: the VAE trains on the cached features (the official code
re-encodes crops at scale 0.5-1); new-class features are drawn from a pool synthesized once per run
(`synthetic_per_class` each, fresh z per feature) instead of regenerated every step, so a step costs what a plain
CoOp step costs; the method is selected on the validation split, never on test; the seed is the run's.

Ablations (options of the same command): `generator=mlp` replaces the text encoder by an MLP trained from
scratch on [z, the class's CLIP text embedding of "a photo of a {name}."]; the reconstruction then needs no
prompt; `objective=gan` trains the same generator as a conditional WGAN-GP (critic on [feature, class text
embedding], 5 critic updates per generator update, gradient penalty 10, Adam betas 0.5/0.9) instead of a VAE.
Options go after the method's own as `ship.KEY=VALUE`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ...checkpoint import load_method_weights, load_module_state, save_method_weights
from ...digest import fingerprint as digest  # `fingerprint` names the run's own here
from ...errors import CheckpointError, ClipadaptError
from ...features import FeatureSet
from ...paths import safe_name, write_atomic
from ...text import zeroshot_weights
from ...training.loop import Trainer, frozen
from ...views import (
    DiagnosticView,
    Plot,
    Run,
    Table,
    count_text,
    number_text,
    pyplot,
    register_view,
    save_figure,
    skip_plot,
)
from ..contract import Capabilities, Claim, Evaluated

GENERATORS = ("clip_text", "mlp")
OBJECTIVES = ("vae", "gan")
CLASS_TEMPLATE = "a photo of a {}."


@dataclass
class ShipConfig:
    n_ctx: int = 4  # learned global prompt vectors p_1..p_L
    encoder_hidden: int = 2048
    latent_dim: int = 0  # 0: the feature size (512 for ViT-B/16, as the official code)
    generator_hidden: int = 4096
    generator: str = "clip_text"  # clip_text | mlp (ablation: no text encoder)
    objective: str = "vae"  # vae | gan (ablation: conditional WGAN-GP, the same generator)
    critic_steps: int = 5  # gan: critic updates per generator update
    gradient_penalty: float = 10.0  # gan: WGAN-GP's lambda
    kl_weight: float = 1.0
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01  # AdamW's default, as the official optimizers
    synthetic_ratio: float = 1.0  # synthetic features per real feature in every training batch
    synthetic_per_class: int = 256  # pool of synthesized features per class without data
    synthetic_val: bool = False  # add held-out synthetic features of those classes to the validation split
    # (matters to methods that choose on it: tip_adapter's search, select=val)
    seed: int = 1
    checkpoint_every: int = 200


class ShipModel(nn.Module):
    """Every learned weight of SHIP (the text encoder stays outside): the generator and its prompt vectors, with
    the VAE's encoder (`objective=vae`) or a WGAN-GP critic on [feature, class text embedding] (`objective=gan`)."""

    def __init__(self, feature_dim: int, text_width: int, config: ShipConfig):
        super().__init__()
        self.latent_dim = config.latent_dim or feature_dim
        if config.objective == "vae":
            self.encoder = nn.Sequential(nn.Linear(feature_dim, config.encoder_hidden), nn.ReLU())
            self.mean = nn.Linear(config.encoder_hidden, self.latent_dim)
            self.log_var = nn.Linear(config.encoder_hidden, self.latent_dim)
        else:
            self.critic = nn.Sequential(
                nn.Linear(2 * feature_dim, config.encoder_hidden),
                nn.LeakyReLU(0.2),
                nn.Linear(config.encoder_hidden, 1),
            )
        if config.generator == "clip_text":
            # z -> bias r in the token-embedding space, added to every prompt vector
            self.generator = nn.Sequential(
                nn.Linear(self.latent_dim, config.generator_hidden),
                nn.ReLU(),
                nn.Linear(config.generator_hidden, text_width),
            )
            self.ctx = nn.Parameter(torch.randn(config.n_ctx, text_width) * 0.02)
        else:
            # [z, class text embedding] -> feature, trained from scratch
            self.generator = nn.Sequential(
                nn.Linear(self.latent_dim + feature_dim, config.generator_hidden),
                nn.ReLU(),
                nn.Linear(config.generator_hidden, feature_dim),
            )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)


class Ship:
    """The generative model. `fit` trains it on real features of the classes that have data; `synthesize`
    returns features for any class names."""

    def __init__(self, backbone, config: ShipConfig):
        if config.generator not in GENERATORS:
            raise ClipadaptError(f"ship generator must be one of {', '.join(GENERATORS)}, got '{config.generator}'")
        if config.objective not in OBJECTIVES:
            raise ClipadaptError(f"ship objective must be one of {', '.join(OBJECTIVES)}, got '{config.objective}'")
        if config.generator == "clip_text":
            backbone.context_vectors(config.n_ctx)  # fails early when the prompt cannot fit the context length
        for key in (
            "epochs",
            "batch_size",
            "synthetic_per_class",
            "n_ctx",
            "encoder_hidden",
            "generator_hidden",
            "critic_steps",
        ):
            if getattr(config, key) < 1:
                raise ClipadaptError(f"ship {key} must be at least 1, got {getattr(config, key)}")
        if config.synthetic_ratio <= 0:
            raise ClipadaptError(f"ship synthetic_ratio must be positive, got {config.synthetic_ratio}")
        self.backbone = backbone
        self.config = config
        with torch.random.fork_rng(devices=[]):  # the same seed builds the same networks, the global RNG untouched
            torch.manual_seed(config.seed)
            self.model = ShipModel(backbone.embed_dim, backbone.text_width, config).to(backbone.device)
        self._class_embeddings: dict[tuple[str, ...], torch.Tensor] = {}

    # ---- the generator -----------------------------------------------------------------------------------
    def _class_embedding(self, classnames: Sequence[str]) -> torch.Tensor:
        key = tuple(classnames)
        if key not in self._class_embeddings:
            with torch.no_grad():
                self._class_embeddings[key] = zeroshot_weights(self.backbone, classnames, [CLASS_TEMPLATE])
        return self._class_embeddings[key]

    def generate(self, z: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        """Unit-norm features [n, D] for latents `z` [n, latent] of the classes `classnames[labels]`."""
        if self.config.generator == "mlp":
            condition = self._class_embedding(classnames)[self.backbone.to_device(labels)].to(z)
            return F.normalize(self.model.generator(torch.cat([z, condition], dim=-1)), dim=-1)
        bias = self.model.generator(z)
        ctx = self.model.ctx.unsqueeze(0) + bias.unsqueeze(1)  # [n, L, width]: r added to every prompt vector
        return self.backbone.encode_prompted_text(ctx, classnames, normalize=True, class_index=labels).float()

    def loss(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        classnames: Sequence[str],
        noise: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The negative ELBO of a batch of (unnormalized) image features, as the official `vae_loss`: squared error
        summed over dimensions plus kl_weight x KL(q(z|x) || N(0, I)), both averaged over the batch. `noise` draws
        the reparameterization noise."""
        x = F.normalize(features.float(), dim=-1)
        hidden = self.model.encoder(x)
        mean, log_var = self.model.mean(hidden), self.model.log_var(hidden)
        eps = self.backbone.to_device(torch.randn(mean.shape, generator=noise)).to(mean.dtype)
        z = mean + eps * torch.exp(0.5 * log_var)
        reconstruction = self.generate(z, labels, classnames)
        squared_error = (reconstruction - x).pow(2).sum(dim=1).mean()
        kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(dim=1).mean()
        return squared_error + self.config.kl_weight * kl

    def gan_loss(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        classnames: Sequence[str],
        critic_step: bool,
        noise: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The conditional WGAN-GP losses (the `objective=gan` ablation). Critic step: D(fake) - D(real) + lambda x
        gradient penalty at random interpolates, the generator untouched; generator step: -D(fake), the critic
        untouched. D scores [feature, the class's text embedding]."""
        x = F.normalize(features.float(), dim=-1)
        condition = self._class_embedding(classnames)[self.backbone.to_device(labels)].to(x)
        z = self.backbone.to_device(torch.randn(len(x), self.model.latent_dim, generator=noise)).to(x.dtype)

        def critic(sample: torch.Tensor) -> torch.Tensor:
            return self.model.critic(torch.cat([sample, condition], dim=-1))

        if not critic_step:
            with frozen(self.model.critic):  # no gradients reach the critic from the generator's loss
                return -critic(self.generate(z, labels, classnames)).mean()
        with torch.no_grad():
            fake = self.generate(z, labels, classnames)
        mix = self.backbone.to_device(torch.rand(len(x), 1, generator=noise)).to(x.dtype)
        interpolates = (mix * x + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic(interpolates).sum(), interpolates, create_graph=True)
        penalty = (gradient.norm(dim=1) - 1).pow(2).mean()
        return critic(fake).mean() - critic(x).mean() + self.config.gradient_penalty * penalty

    # ---- training and synthesis --------------------------------------------------------------------------
    def fit(
        self, train: FeatureSet, classnames: Sequence[str], out_dir: str | Path | None = None, progress: bool = True
    ) -> dict:
        """Train the generator (as a VAE, or a GAN for the ablation) on `train` (labels index `classnames`). With
        `out_dir`, checkpoints go there and a rerun resumes. Returns a summary with the epoch losses and the
        nearest-class accuracy of features synthesized for the training classes (a check that the generator learned
        the classes, not only the mean)."""
        n = len(train)
        if n == 0:
            raise ClipadaptError("ship needs training features")
        classnames = list(classnames)
        # gan: every batch serves critic_steps critic updates, then one generator update
        repeats = self.config.critic_steps + 1 if self.config.objective == "gan" else 1
        steps_per_epoch = math.ceil(n / self.config.batch_size) * repeats
        trainer = self._trainer(train, classnames, steps_per_epoch, out_dir, progress)

        def batches(epoch: int, offset: int):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch))
            for step in range(offset, steps_per_epoch):
                b = step // repeats
                yield order[b * self.config.batch_size : (b + 1) * self.config.batch_size]

        def step_fn(indices: torch.Tensor, step: int) -> torch.Tensor:
            noise = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step + 700_001)  # exact on resume
            features, labels = self.backbone.to_device(train.features[indices]), train.labels[indices]
            if self.config.objective == "gan":
                critic_step = step % repeats < self.config.critic_steps
                return self.gan_loss(features, labels, classnames, critic_step=critic_step, noise=noise)
            return self.loss(features, labels, classnames, noise=noise)

        self.model.train()
        with frozen(self.backbone.model):
            trainer.fit(batches, step_fn)
        self.model.eval()
        seen = self.synthesize(classnames, per_class=min(self.config.synthetic_per_class, 64), progress=False)
        return {
            **trainer.summary(),
            "epochs": self.config.epochs,
            "train_classes_nearest_class_accuracy": nearest_class_accuracy(seen, train),
        }

    def _trainer(
        self, train: FeatureSet, classnames: list[str], steps_per_epoch: int, out_dir: str | Path | None, progress: bool
    ) -> Trainer:
        """The loop over the generator's weights: AdamW (WGAN-GP's betas for the GAN) at a constant rate, resumed
        only by a run of the same settings, classes, backbone and features."""
        betas = (0.5, 0.9) if self.config.objective == "gan" else (0.9, 0.999)
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.config.lr,
            betas=betas,
            weight_decay=self.config.weight_decay,
        )
        # What shapes the generator's training (not what is done with it afterwards), and the exact data.
        trained_by = {
            k: v
            for k, v in asdict(self.config).items()
            if k not in ("synthetic_ratio", "synthetic_per_class", "synthetic_val", "checkpoint_every")
        }
        data = digest(train.labels, train.features.float(), length=64)
        return Trainer(
            self.model,
            optimizer,
            total_steps=self.config.epochs * steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            lr_at=lambda step: self.config.lr,
            out_dir=out_dir,
            run_fingerprint=json.dumps([trained_by, classnames, self.backbone.fingerprint(), data], sort_keys=True),
            checkpoint_every=self.config.checkpoint_every,
            progress=progress,
            desc=f"ship {self.config.objective}",
        )

    @torch.no_grad()
    def synthesize(
        self,
        classnames: Sequence[str],
        per_class: int | None = None,
        seed: int | None = None,
        chunk: int = 1024,
        progress: bool = True,
    ) -> FeatureSet:
        """`per_class` unit-norm features for every name in `classnames` (labels 0..n-1), from z ~ N(0, I) drawn
        with `seed` (the config's by default). Generated in chunks of `chunk` prompts, one text-encoder pass each."""
        per_class = per_class or self.config.synthetic_per_class
        if not classnames:
            raise ClipadaptError("ship synthesis needs at least one class name")
        labels = torch.arange(len(classnames)).repeat_interleave(per_class)
        generator = torch.Generator().manual_seed(self.config.seed if seed is None else seed)
        z = torch.randn(len(labels), self.model.latent_dim, generator=generator)
        device = self.backbone.device
        parts = []
        for start in tqdm(range(0, len(labels), chunk), desc="ship synthesis", disable=not progress):
            parts.append(
                self.generate(
                    z[start : start + chunk].to(device), labels[start : start + chunk], list(classnames)
                ).cpu()
            )
        return FeatureSet(torch.cat(parts), labels)

    @torch.no_grad()
    def interpret(self, k: int = 5) -> dict:
        """The nearest vocabulary words (cosine, as the paper) to each learned prompt vector p_l, and to p_l + r
        for the mean latent z = 0 (the prompt of an average instance)."""
        if self.config.generator != "clip_text":
            raise ClipadaptError("only the clip_text generator has prompt vectors to interpret")
        z = torch.zeros(1, self.model.latent_dim, device=self.model.ctx.device)
        mean_prompt = self.model.ctx + self.model.generator(z)
        return {
            "prompts": self.backbone.nearest_words(self.model.ctx, k),
            "mean_latent_prompts": self.backbone.nearest_words(mean_prompt, k),
        }

    @classmethod
    def from_file(cls, backbone, path: str | Path) -> Ship:
        """A SHIP model as `save` wrote it, with the config stored in the file."""
        tensors, metadata = load_method_weights(path, "ship")
        try:
            config = ShipConfig(**metadata["config"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: the stored ship config does not fit this version: {e}") from e
        ship = cls(backbone, config)
        load_module_state(ship.model, tensors, path, "ship")
        return ship

    def save(self, path: str | Path) -> None:
        """Every learned weight as safetensors, with the config in the metadata."""
        save_method_weights(path, self.model.state_dict(), "ship", self.config)

    def load(self, path: str | Path) -> None:
        load_module_state(self.model, load_method_weights(path, "ship")[0], path, "ship")


def nearest_class_accuracy(synthetic: FeatureSet, real: FeatureSet) -> float:
    """Percent of synthetic features whose most similar (cosine) real class mean is their own class, among the
    classes present in both sets (labels must index the same class list)."""
    classes = sorted(set(synthetic.labels.tolist()) & set(real.labels.tolist()))
    if not classes:
        raise ClipadaptError("no class has both synthetic and real features")
    real_features = F.normalize(real.features.float(), dim=-1)
    means = F.normalize(torch.stack([real_features[real.labels == c].mean(0) for c in classes]), dim=-1)
    keep = torch.isin(synthetic.labels, torch.tensor(classes))
    nearest = (F.normalize(synthetic.features[keep].float(), dim=-1) @ means.T).argmax(dim=1)
    truth = torch.searchsorted(torch.tensor(classes), synthetic.labels[keep])
    return 100.0 * (nearest == truth).float().mean().item()


def generator_path(path: str | Path) -> Path:
    """Where `WithShip` keeps SHIP's generator beside METHOD's weights file `path`: named after it, so that two
    classifiers in one folder keep their own."""
    path = Path(path)
    return path.with_name(f"{path.stem}.ship.safetensors")


class WithShip:
    """`METHOD+ship`: train SHIP on the real features, synthesize features for the classes the protocol tests
    without data (base2new's new classes, gzsl's unseen ones, crossdataset's targets), then fit METHOD on real
    and synthetic features over the joint label space. Scoring is METHOD's."""

    # Against METHOD without SHIP (`METHOD` stands for it: `methods.method_claims` names it).
    claims = (
        Claim("base2new", "new_accuracy", "METHOD", +1, "SHIP (ICCV 2023), base-to-new table"),
        Claim("base2new", "harmonic_mean", "METHOD", +1, "SHIP (ICCV 2023), base-to-new table"),
        Claim("gzsl", "harmonic_mean", "METHOD", +1, "SHIP (ICCV 2023), generalized zero-shot table"),
    )

    def __init__(self, method, name: str, backbone, config: ShipConfig):
        self.method, self.name, self.config = method, name, config
        self.capabilities = Capabilities(
            trains=True,
            uses_unseen_classnames=True,
            diagnoses=True,
            scores_unseen_classes=method.capabilities.scores_unseen_classes,
        )
        self.ship = Ship(backbone, config)
        self.synthetic: FeatureSet | None = None
        self.synthetic_classnames: list[str] = []
        self.num_real_classes = 0
        self.generator_ready = False  # SHIP trained or loaded: what `save` writes beside METHOD's weights

    def fit(
        self,
        train: FeatureSet,
        classnames: Sequence[str],
        val: FeatureSet | None = None,
        template_key: str | None = None,
        out_dir: str | Path | None = None,
        progress: bool = True,
        unseen_classnames: Sequence[str] = (),
    ) -> dict:
        if not unseen_classnames:
            raise ClipadaptError(
                f"{self.name} synthesizes features for classes that have no training data, and "
                "this protocol has none: use --protocol base2new, gzsl or crossdataset"
            )
        out_dir = Path(out_dir) if out_dir is not None else None
        ship_summary = self.ship.fit(
            train, classnames, out_dir=out_dir / "ship" if out_dir else None, progress=progress
        )
        self.generator_ready = True
        synthetic = self.ship.synthesize(list(unseen_classnames), progress=progress)
        # Real cached features are not normalized: give the synthetic ones the real features' mean norm, so a
        # method sees one distribution of lengths whatever it does with them.
        scale = train.features.float().norm(dim=-1).mean()
        self.synthetic = FeatureSet(synthetic.features * scale, synthetic.labels + len(classnames))
        self.synthetic_classnames = list(unseen_classnames)
        self.num_real_classes = len(classnames)
        if self.config.synthetic_val and val is not None and len(val):
            # Held-out synthetic features (other latents) stand in for the validation images the new classes lack,
            # as many per class as the real classes have, so validation-based choices see every class.
            per_class = max(1, int(torch.bincount(val.labels).max()))
            held_out = self.ship.synthesize(
                list(unseen_classnames), per_class=per_class, seed=self.config.seed + 1_000_003, progress=False
            )
            val = FeatureSet(
                torch.cat([val.features.float(), held_out.features * scale]),
                torch.cat([val.labels, held_out.labels + len(classnames)]),
            )
        method_summary = self.method.fit(
            train,
            list(classnames) + list(unseen_classnames),
            val=val,
            template_key=template_key,
            out_dir=out_dir / "method" if out_dir else None,
            progress=progress,
            generated=self.synthetic,
            generated_ratio=self.config.synthetic_ratio,
        )
        return {
            "ship": ship_summary,
            "method": method_summary,
            "synthetic_features": len(self.synthetic),
            "synthetic_classes": len(unseen_classnames),
        }

    def logits(
        self, features: torch.Tensor, classnames: Sequence[str], template_key: str | None = None
    ) -> torch.Tensor:
        return self.method.logits(features, classnames, template_key=template_key)

    def save(self, path: str | Path, **header: Any) -> None:
        """METHOD's weights (trained on real and synthetic features) to `path`, and SHIP's generator, once trained
        or loaded, beside them as `generator_path(path)` (what `clipadapt interpret` reads)."""
        self.method.save(path, **header)
        if self.generator_ready:
            self.ship.save(generator_path(path))

    def load(self, path: str | Path) -> None:
        """METHOD's weights, and SHIP's generator when its file is beside them: scoring needs only METHOD's, so a
        classifier file copied alone still loads."""
        self.method.load(path)
        if generator_path(path).is_file():
            self.ship.load(generator_path(path))
            self.generator_ready = True

    def diagnose(self, evaluated: Evaluated) -> dict:
        """`synthesis`: how close the features synthesized for the evaluated data set's classes came to their real
        test features (`synthesis_quality`; a sample of both goes to `synthesis-<data set>.safetensors` in the run
        folder for the report's projection); nothing where it synthesized none of them. The wrapped method's own
        diagnostics come along."""
        found = self.method.diagnose(evaluated) if self.method.capabilities.diagnoses else {}
        name = evaluated.splits.name
        sample = Path(evaluated.out_dir) / f"synthesis-{safe_name(name)}.safetensors" if evaluated.out_dir else None
        quality = self.synthesis_quality(evaluated.test_features(), evaluated.splits.classnames, sample_path=sample)
        return {**found, "synthesis": quality} if quality else found

    def synthesis_quality(
        self, real: FeatureSet, classnames: Sequence[str], sample_path: str | Path | None = None
    ) -> dict:
        """How the synthetic features of the classes in `classnames` relate to those classes' real features (a
        diagnostic on test images: it selects nothing): nearest-class accuracy among these classes, and the mean
        cosine of a synthetic feature to its own class's real mean vs to the other classes' means. With
        `sample_path`, up to 64 real and 64 synthetic features per class are written there (`report` projects
        them)."""
        if self.synthetic is None:
            raise ClipadaptError(f"{self.name} has synthesized nothing yet: fit it first")
        index = {name: i for i, name in enumerate(self.synthetic_classnames)}
        present = set(real.labels.tolist())
        names = [n for c, n in enumerate(classnames) if n in index and c in present]
        if not names:
            return {}
        offset = self.num_real_classes  # synthetic labels follow the real classes in the joint label space
        mapping = torch.full((len(self.synthetic_classnames),), -1, dtype=torch.long)
        for i, name in enumerate(names):
            mapping[index[name]] = i
        own = mapping[self.synthetic.labels - offset]
        synthetic = FeatureSet(self.synthetic.features[own >= 0], own[own >= 0])
        real_labels = torch.tensor(
            [names.index(classnames[c]) if classnames[c] in index else -1 for c in real.labels.tolist()],
            dtype=torch.long,
        )
        real = FeatureSet(real.features[real_labels >= 0], real_labels[real_labels >= 0])
        if sample_path is not None:
            save_synthesis_sample(sample_path, real, synthetic, names)
        means = F.normalize(
            torch.stack(
                [F.normalize(real.features[real.labels == c].float(), dim=-1).mean(0) for c in range(len(names))]
            ),
            dim=-1,
        )
        cosines = F.normalize(synthetic.features.float(), dim=-1) @ means.T
        is_own = F.one_hot(synthetic.labels, len(names)).bool()
        nearest = 100.0 * (cosines.argmax(dim=1) == synthetic.labels).float().mean().item()
        return {
            "nearest_class_accuracy": nearest,  # as nearest_class_accuracy, from the cosines at hand
            "cosine_to_own_class": cosines[is_own].mean().item(),
            "cosine_to_other_classes": cosines[~is_own].mean().item() if len(names) > 1 else None,
            "classes": len(names),
        }


def _first_per_class(features: FeatureSet, per_class: int) -> FeatureSet:
    keep = torch.zeros(len(features), dtype=torch.bool)
    for c in features.labels.unique():
        keep[(features.labels == c).nonzero().flatten()[:per_class]] = True
    return FeatureSet(features.features[keep], features.labels[keep])


def save_synthesis_sample(
    path: str | Path, real: FeatureSet, synthetic: FeatureSet, classnames: Sequence[str], per_class: int = 64
) -> None:
    """Real and synthetic features of the same classes (labels index `classnames`), at most `per_class` of each
    per class, unit-normalized, as one safetensors file (written atomically)."""
    real, synthetic = _first_per_class(real, per_class), _first_per_class(synthetic, per_class)
    tensors = {
        "real": F.normalize(real.features.float(), dim=-1).half(),
        "real_labels": real.labels,
        "synthetic": F.normalize(synthetic.features.float(), dim=-1).half(),
        "synthetic_labels": synthetic.labels,
    }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"classnames": json.dumps(list(classnames))}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_synthesis_sample(path: str | Path) -> tuple[FeatureSet, FeatureSet, list[str]]:
    """What `save_synthesis_sample` wrote: real and synthetic features and their class names."""
    try:
        with safe_open(str(path), "pt") as f:
            names = json.loads((f.metadata() or {}).get("classnames", "null") or "null")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, json.JSONDecodeError) as e:
        raise ClipadaptError(f"{path}: unreadable synthesis sample ({e})") from None
    if names is None or set(tensors) != {"real", "real_labels", "synthetic", "synthetic_labels"}:
        raise ClipadaptError(f"{path}: not a synthesis sample (written by a SHIP run's synthesis_quality)")
    return (
        FeatureSet(tensors["real"], tensors["real_labels"]),
        FeatureSet(tensors["synthetic"], tensors["synthetic_labels"]),
        names,
    )


# ---- how the report shows `synthesis` ------------------------------------------------------------------------
MAX_PROJECTED_CLASSES = 8  # more colours than this are not told apart in a scatter plot


def synthesis_table(runs: Sequence[Run]) -> list[Table]:
    """One row per data set SHIP synthesized for: the run's own (base2new, gzsl) and each cross-data-set target's."""
    synthesized = [
        (run, run.dataset, run.metrics["synthesis"]) for run in runs if isinstance(run.metrics.get("synthesis"), dict)
    ]
    synthesized += [
        (run, target, result["synthesis"])
        for run in runs
        for target, result in (run.metrics.get("targets") or {}).items()
        if isinstance(result, dict) and isinstance(result.get("synthesis"), dict)
    ]
    if not synthesized:
        return []
    table = Table(
        "SHIP's synthesized features against the real test features of their classes",
        [
            "method",
            "data set",
            "protocol",
            "classes",
            "nearest real class is own (%)",
            "cosine to own class",
            "cosine to other classes",
        ],
    )
    for run, dataset, s in synthesized:
        cosines = [
            f"{s[k]:.3f}" if isinstance(s.get(k), (int, float)) else "-"
            for k in ("cosine_to_own_class", "cosine_to_other_classes")
        ]
        table.rows.append(
            [
                run.method,
                dataset,
                run.metrics["protocol"],
                count_text(s.get("classes")),
                number_text(s.get("nearest_class_accuracy")),
                *cosines,
            ]
        )
    return [table]


def project_2d(features: torch.Tensor) -> torch.Tensor:
    """The first two principal components [N, 2] of `features` [N, D] (centred; signs fixed so that each
    component's largest coordinate is positive, for plots that do not flip between runs)."""
    centred = features.float() - features.float().mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    components = v[:2].T
    signs = torch.sign(components.gather(0, components.abs().argmax(dim=0, keepdim=True)))
    return centred @ (components * signs)


def plot_synthesis(runs: Sequence[Run], folder: Path, taken: set[str]) -> list[Plot]:
    """Real test features (dots) and SHIP's synthesized features (crosses) of up to eight classes, projected on
    the two principal components of both together."""
    plt = pyplot()
    plots = []
    for run in runs:
        for file in sorted(run.folder.glob("synthesis-*.safetensors")):
            try:
                real, synthetic, names = load_synthesis_sample(file)
            except ClipadaptError as e:
                skip_plot(f"no projection for {file}: {e}")
                continue
            source = file.stem.removeprefix("synthesis-")
            classes = list(range(min(len(names), MAX_PROJECTED_CLASSES)))
            keep_real = torch.isin(real.labels, torch.tensor(classes))
            keep_synthetic = torch.isin(synthetic.labels, torch.tensor(classes))
            points = project_2d(torch.cat([real.features[keep_real], synthetic.features[keep_synthetic]])).numpy()
            real_points, synthetic_points = points[: int(keep_real.sum())], points[int(keep_real.sum()) :]
            real_labels, synthetic_labels = real.labels[keep_real].numpy(), synthetic.labels[keep_synthetic].numpy()
            fig, ax = plt.subplots(figsize=(6.4, 4.6))
            colours = plt.get_cmap("tab10")
            for c in classes:
                ax.scatter(*real_points[real_labels == c].T, s=12, alpha=0.6, color=colours(c), label=names[c][:28])
                ax.scatter(*synthetic_points[synthetic_labels == c].T, s=18, marker="x", color=colours(c))
            ax.set_title(f"{run.method}: real (dots) vs synthesized (crosses), {source}", fontsize=9)
            ax.set_xlabel("principal component 1")
            ax.set_ylabel("principal component 2")
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
            title = f"Real vs SHIP-synthesized features of {source}'s classes: {run.method} trained on {run.dataset}"
            if len(names) > len(classes):
                title += f" (the first {len(classes)} of {len(names)} classes)"
            plots.append(Plot(title, save_figure(fig, folder, f"synthesis-{run.method}-{file.stem}", taken)))
    return plots


register_view(DiagnosticView("synthesis", position=0, tables=synthesis_table, plots=plot_synthesis))
