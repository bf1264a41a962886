"""The official code against clipadapt's, from the same weights, on the same inputs. The model: CoOp's vendored `clip/`
(OpenAI's model and tokenizer, what CoOp, CoCoOp and SHIP build on) given the shipped model's state dict in OpenAI's
layout, against `load_backbone()`; token ids, image and text features and zero-shot logits compared on a world data
set. CoOp: the official PromptLearner / CustomCLIP (trainers/coop.py) and clipadapt's `coop` from the same context
vectors, their logits, loss and context gradient on one batch, and the context after a few SGD steps (Dassl's
optimizer settings for CoOp) on each side. The first level of docs/parity.md.

    git clone https://github.com/KaiyangZhou/CoOp /tmp/CoOp
    git clone https://github.com/gaopengcuhk/CLIP-Adapter /tmp/CLIP-Adapter
    git clone https://github.com/gaopengcuhk/Tip-Adapter /tmp/Tip-Adapter
    git clone https://github.com/mrflogs/SHIP /tmp/SHIP
    python parity/equivalence.py --coop /tmp/CoOp --clip-adapter /tmp/CLIP-Adapter --tip-adapter /tmp/Tip-Adapter \
        --ship /tmp/SHIP

CoOp's clip/ and trainers/coop.py are copied to a temporary folder and the patches in parity/patches/ applied there
(why: in each); Dassl, which trainers/coop.py imports for its trainer class, is given empty stand-ins (the classes
compared use none of it); the official code runs in fp32, as CoOp's `PREC: fp32` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import numpy
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from clipadapt import load_backbone
from clipadapt.data import ImageDataset, fewshot, load_dataset
from clipadapt.features import FeatureSet
from clipadapt.methods import build_method
from clipadapt.methods.addons.ship import Ship, ShipConfig
from clipadapt.methods.linear_probe import COARSE_C_GRID

HERE = Path(__file__).parent
RECORD = HERE / "equivalence.json"
PATCHES = sorted((HERE / "patches").glob("*.patch"))
TEMPLATE = "a photo of a {}."
# Dassl's SGD for CoOp (configs/trainers/CoOp/*.yaml: OPTIM.NAME sgd, LR 0.002; Dassl's defaults: momentum 0.9,
# weight decay 5e-4), and clipadapt's coop defaults.
SGD = {"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4}
STEPS, BATCH = 3, 32
# A far target, where the cache has something to add to zero-shot (on the near objects the search keeps its least).
TIP_DATASET, TIP_SHOTS = "world:textures", 16
COCOOP_BATCH = 8  # the official CoCoOp encodes each image's prompts in its own text-encoder call


def official_code(
    coop: Path, clip_adapter: Path, tip_adapter: Path, ship: Path, folder: Path
) -> dict[str, types.ModuleType]:
    """CoOp's `clip` package, `trainers/coop.py` and `trainers/cocoop.py`, CLIP-Adapter's `clip_adapter.py` (a
    trainer written for CoOp's tree), copied into `folder`, patched and imported; Tip-Adapter's `main.py` and SHIP's
    `main_coop_vae.py`, each with its own `utils.py` and `datasets/` in a folder of its own."""
    shutil.copytree(coop / "clip", folder / "clip")
    shutil.copy(clip_adapter / "clip_adapter.py", folder / "clip_adapter.py")
    (folder / "trainers").mkdir()
    for trainer in ("coop.py", "cocoop.py"):
        shutil.copy(coop / "trainers" / trainer, folder / "trainers" / trainer)
    shutil.copytree(tip_adapter, folder / "tip_adapter", ignore=shutil.ignore_patterns(".git"))
    shutil.copytree(ship, folder / "ship", ignore=shutil.ignore_patterns(".git"))
    for patch in PATCHES:
        subprocess.run(["git", "apply", str(patch.absolute())], cwd=folder, check=True)
    sys.path.insert(0, str(folder))
    stand_ins = {
        "dassl.engine": {
            "TRAINER_REGISTRY": types.SimpleNamespace(register=lambda: lambda cls: cls),
            "TrainerX": object,
        },
        "dassl.metrics": {"compute_accuracy": None},
        "dassl.utils": {"load_pretrained_weights": None, "load_checkpoint": None},
        "dassl.optim": {"build_optimizer": None, "build_lr_scheduler": None},
    }
    for name, attributes in {"dassl": {}, "gdown": {}, **stand_ins}.items():  # gdown: Tip-Adapter's downloads
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__dict__.update(attributes)
    code = {
        name: importlib.import_module(name) for name in ("clip", "trainers.coop", "trainers.cocoop", "clip_adapter")
    }
    # Tip-Adapter and SHIP each import their own top-level `utils` and `datasets`: one at a time.
    for name, main in (("tip_adapter", "main.py"), ("ship", "main_coop_vae.py")):
        for shared in [m for m in sys.modules if m.split(".")[0] in ("utils", "datasets")]:
            del sys.modules[shared]
        sys.path.insert(0, str(folder / name))
        spec = importlib.util.spec_from_file_location(f"{name}_main", folder / name / main)
        code[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code[name])
        sys.path.remove(str(folder / name))
    return code


def official_model(clip, backbone) -> nn.Module:
    """The official model built by `clip.build_model` from the backbone's weights (OpenAI's layout already: open_clip
    keeps it), with the backbone's activation and head widths, in fp32."""
    ours = backbone.model
    clip.model.ACTIVATION = type(ours.transformer.resblocks[0].mlp.gelu)
    clip.model.VISION_HEAD_WIDTH = ours.visual.transformer.width // ours.visual.transformer.resblocks[0].attn.num_heads
    clip.model.TEXT_HEAD_WIDTH = ours.transformer.width // ours.transformer.resblocks[0].attn.num_heads
    state = {key: value.detach().clone() for key, value in ours.state_dict().items()}
    return clip.model.build_model(state).float().eval()


@torch.no_grad()
def compare(coop: Path, clip_adapter: Path, tip_adapter: Path, ship: Path, dataset: str, n_images: int) -> dict:
    """Every comparison: the model's on `n_images` test images of `dataset`, each method's on one training batch (the
    Tip-Adapter and lpclip runs on their own far target)."""
    backbone = load_backbone()
    splits = load_dataset(dataset)
    with tempfile.TemporaryDirectory() as tmp:  # the official modules stay imported once their files are gone
        code = official_code(coop, clip_adapter, tip_adapter, ship, Path(tmp))
    clip = code["clip"]
    official = official_model(clip, backbone)
    batch = next(iter(DataLoader(ImageDataset(splits.train, backbone.image_transform()), batch_size=BATCH)))
    classnames, pixels, labels = splits.classnames, *batch[:2]
    return {
        "dataset": dataset,
        **compare_model(clip, official, backbone, splits, n_images),
        "coop": compare_coop(code["trainers.coop"], official, backbone, classnames, pixels, labels),
        "cocoop": compare_cocoop(code["trainers.cocoop"], official, backbone, classnames, pixels, labels),
        "clip_adapter": compare_clip_adapter(code["clip_adapter"], official, backbone, classnames, pixels, labels),
        "tip_adapter": compare_tip_adapter(code["tip_adapter"], clip, official, backbone),
        "ship": compare_ship(code["ship"], official, backbone, classnames, pixels, labels),
        "linear_probe": compare_lpclip(coop, official, backbone),
    }


def compare_model(clip, official: nn.Module, backbone, splits, n_images: int) -> dict:
    """Token ids, image and text features and zero-shot logits of the official model and ours."""
    prompts = [TEMPLATE.format(name) for name in splits.classnames]
    ours_ids = backbone.tokenize(prompts).cpu()
    official_ids = clip.tokenize(prompts, context_length=official.context_length)
    loader = DataLoader(ImageDataset(splits.test[:n_images], backbone.image_transform()), batch_size=n_images)
    pixels = next(iter(loader))[0]
    image_ours, image_official = backbone.encode_image(pixels).float(), official.encode_image(pixels).float()
    text_ours, text_official = backbone.encode_text(ours_ids).float(), official.encode_text(official_ids).float()

    def logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T

    logits_ours = logits(image_ours, text_ours, backbone.model.logit_scale)
    logits_official = logits(image_official, text_official, official.logit_scale)
    return {
        "images": len(pixels),
        "classes": len(prompts),
        "token ids equal": bool(torch.equal(ours_ids, official_ids)),
        "image features, max abs difference": (image_ours - image_official).abs().max().item(),
        "image features, max abs value": image_ours.abs().max().item(),
        "text features, max abs difference": (text_ours - text_official).abs().max().item(),
        "text features, max abs value": text_ours.abs().max().item(),
        "zero-shot logits, max abs difference": (logits_ours - logits_official).abs().max().item(),
        "zero-shot predictions equal": bool(torch.equal(logits_ours.argmax(-1), logits_official.argmax(-1))),
    }


def official_cfg(trainer: str, size: int, **options):
    """The yacs config fields a trainer's PromptLearner reads, as attributes."""
    section = types.SimpleNamespace(**options)
    return types.SimpleNamespace(
        TRAINER=types.SimpleNamespace(**{trainer: section}), INPUT=types.SimpleNamespace(SIZE=(size, size))
    )


def optimizer_steps(
    learned: tuple[list[nn.Parameter], list[nn.Parameter]],
    losses_at: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    optimizer: str = "SGD",
    settings: dict = SGD,
) -> dict:
    """`STEPS` steps of the same optimizer on the official side's and ours' parameters (paired in order): the loss,
    the largest gradient difference at the first step, and the largest parameter difference after the last."""
    optimizers = [getattr(torch.optim, optimizer)(parameters, **settings) for parameters in learned]
    found: dict = {"steps": STEPS, "optimizer": f"{optimizer} {settings}"}
    for step in range(STEPS):
        losses = losses_at()
        for optimizer, loss in zip(optimizers, losses):
            optimizer.zero_grad()
            loss.backward()
        if step == 0:
            found["loss"] = losses[0].item()
            found["loss, abs difference"] = abs(losses[0].item() - losses[1].item())
            found["gradient, max abs value"] = max(p.grad.abs().max().item() for p in learned[1])
            found["gradient, max abs difference"] = max((a.grad - b.grad).abs().max().item() for a, b in zip(*learned))
        for optimizer in optimizers:
            optimizer.step()
    found[f"loss at step {STEPS}"] = losses[0].item()
    found[f"loss at step {STEPS}, abs difference"] = abs(losses[0].item() - losses[1].item())
    found[f"parameters after {STEPS} steps, max abs difference"] = max(
        (a - b).abs().max().item() for a, b in zip(*learned)
    )
    return found


@torch.enable_grad()
def compare_coop(coop_trainer, official: nn.Module, backbone, classnames, pixels, labels) -> dict:
    """The official CustomCLIP (on the images) and clipadapt's coop (on their frozen features, as it trains by
    default) from the same 16 random context vectors: logits, loss and gradient, then `STEPS` SGD steps each."""
    cfg = official_cfg(
        "COOP", official.visual.input_resolution, N_CTX=16, CTX_INIT="", CSC=False, CLASS_TOKEN_POSITION="end"
    )
    torch.manual_seed(0)
    theirs = coop_trainer.CustomCLIP(cfg, list(classnames), official)
    for name, parameter in theirs.named_parameters():  # as CoOp's trainer: only the prompt learner learns
        parameter.requires_grad_("prompt_learner" in name)
    ours = build_method("coop", backbone, {"n_ctx": 16})
    with torch.no_grad():
        ours.ctx.copy_(theirs.prompt_learner.ctx)
        features = backbone.encode_image(pixels)
        logits = (theirs(pixels) - ours.logits(features, classnames)).abs().max().item()

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        ours_logits = ours._logits(features, ours._text_features(classnames))
        return F.cross_entropy(theirs(pixels), labels), F.cross_entropy(ours_logits, labels)

    found = optimizer_steps(([theirs.prompt_learner.ctx], [ours.ctx]), losses)
    return {"batch": len(labels), "logits, max abs difference": logits, **found}


@torch.enable_grad()
def compare_cocoop(cocoop_trainer, official: nn.Module, backbone, classnames, pixels, labels) -> dict:
    """The official CoCoOp CustomCLIP (its per-image loop, on the images) and clipadapt's cocoop (every image's
    prompts in one call, on frozen features) from the same context ("a photo of a") and meta-net weights."""
    pixels, labels = pixels[:COCOOP_BATCH], labels[:COCOOP_BATCH]
    cfg = official_cfg("COCOOP", official.visual.input_resolution, N_CTX=4, CTX_INIT="a photo of a", PREC="fp32")
    torch.manual_seed(0)
    theirs = cocoop_trainer.CustomCLIP(cfg, list(classnames), official)
    for name, parameter in theirs.named_parameters():
        parameter.requires_grad_("prompt_learner" in name)
    ours = build_method("cocoop", backbone, {})
    with torch.no_grad():
        initial_ctx = (theirs.prompt_learner.ctx - ours.prompt.ctx).abs().max().item()
        ours.prompt.load_state_dict(
            {k: v for k, v in theirs.prompt_learner.state_dict().items() if not k.startswith("token_")}
        )
        features = backbone.encode_image(pixels)
        theirs.eval()
        logits = (theirs(pixels) - ours.logits(features, classnames)).abs().max().item()
        theirs.train()

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        return theirs(pixels, labels), F.cross_entropy(ours._logits(features, classnames), labels)

    learned = [p for p in theirs.prompt_learner.parameters()], list(ours.prompt.parameters())
    found = optimizer_steps(learned, losses)
    return {
        "batch": len(labels),
        "initial context, max abs difference": initial_ctx,
        "logits, max abs difference": logits,
        **found,
    }


@torch.enable_grad()
def compare_clip_adapter(clip_adapter, official: nn.Module, backbone, classnames, pixels, labels) -> dict:
    """The official CLIP-Adapter CustomCLIP (on the images, its text features encoded every step) and clipadapt's
    clip_adapter (on frozen features, its text weights encoded once) from the same adapter weights; the official
    template of a data set it knows, "a photo of a {}.", for both."""
    cfg = types.SimpleNamespace(DATASET=types.SimpleNamespace(NAME="Caltech101"))
    torch.manual_seed(0)
    theirs = clip_adapter.CustomCLIP(cfg, list(classnames), official)
    for name, parameter in theirs.named_parameters():  # as its trainer: only the adapter learns
        parameter.requires_grad_("adapter" in name)
    ours = build_method("clip_adapter", backbone, {"templates": clip_adapter.CUSTOM_TEMPLATES["Caltech101"]})
    with torch.no_grad():
        ours.adapter.load_state_dict({k.removeprefix("fc."): v for k, v in theirs.adapter.state_dict().items()})
        features = backbone.encode_image(pixels)
        logits = (theirs(pixels) - ours.logits(features, classnames)).abs().max().item()
        weights = ours.text(list(classnames))

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        return F.cross_entropy(theirs(pixels), labels), F.cross_entropy(ours._logits(features, weights), labels)

    found = optimizer_steps((list(theirs.adapter.parameters()), list(ours.adapter.parameters())), losses)
    return {"batch": len(labels), "logits, max abs difference": logits, **found}


@torch.no_grad()
def compare_tip_adapter(tip_main, clip, official: nn.Module, backbone, shots: int = TIP_SHOTS) -> dict:
    """The official `run_tip_adapter` (its search of beta and alpha on val, then the test accuracy it prints) on the
    official model's features of a k-shot subset, against clipadapt's tip_adapter on ours: at the official constant
    scale of 100 (`clip_scale=100`), and at the model's learned scale (clipadapt's default; the official code run
    there by handing it text weights multiplied by scale / 100). The official cache averages `augment_epoch`
    random-crop views; one plain view here, on both sides (clipadapt's cache), and fp32 where the official code runs
    fp16 on a GPU."""
    splits = load_dataset(TIP_DATASET)
    subset = fewshot(splits, shots, 1, sampler="dassl")

    def encode(model_encode, samples) -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(ImageDataset(samples, backbone.image_transform()), batch_size=256)
        parts = [(model_encode(images).float(), labels) for images, labels, _ in loader]
        return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])

    theirs = {split: encode(official.encode_image, subset.split(split)) for split in ("train", "val", "test")}
    ours = {split: encode(backbone.encode_image, subset.split(split)) for split in ("train", "val", "test")}
    names = [TEMPLATE.format(name) for name in splits.classnames]
    prompts = clip.tokenize(names, context_length=official.context_length)
    weights = F.normalize(official.encode_text(prompts).float(), dim=-1).T  # clip_classifier's, one template
    keys = F.normalize(theirs["train"][0], dim=-1).T
    values = F.one_hot(theirs["train"][1]).float()
    cfg = {"init_beta": 1.0, "init_alpha": 1.0, "search_hp": True, "search_scale": [7, 3], "search_step": [200, 20]}
    evaluated = [
        F.normalize(theirs[split][0], dim=-1) if i == 0 else theirs[split][1]
        for split in ("val", "test")
        for i in (0, 1)
    ]
    found: dict = {"dataset": TIP_DATASET, "shots": shots}
    model_scale = official.logit_scale.exp().item()
    for label, scale in (("scale 100", 100.0), (f"scale {model_scale:.1f}", model_scale)):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            tip_main.run_tip_adapter(cfg, keys, values, *evaluated, weights * (scale / 100))
        output = printed.getvalue()
        best = re.findall(r"New best setting, beta: (\d+\.\d+), alpha: (\d+\.\d+); accuracy: (\d+\.\d+)", output)[-1]
        method = build_method(
            "tip_adapter", backbone, {"clip_scale": 100.0 if scale == 100 else 0.0, "templates": TEMPLATE}
        )
        summary = method.fit(
            FeatureSet(*ours["train"]), splits.classnames, val=FeatureSet(*ours["val"]), progress=False
        )
        predictions = method.logits(ours["test"][0], splits.classnames).argmax(-1)
        found[label] = {
            "official: beta, alpha, val accuracy": [float(v) for v in best],
            "ours: beta, alpha, val accuracy": [summary["beta"], summary["alpha"], summary["val_accuracy"]],
            "official zero-shot test accuracy": float(
                re.search(r"Zero-shot CLIP's test accuracy: (\d+\.\d+)", output).group(1)
            ),
            "official test accuracy": float(re.search(r"Tip-Adapter's test accuracy: (\d+\.\d+)", output).group(1)),
            "ours test accuracy": (predictions == ours["test"][1]).float().mean().item() * 100,
        }
    return found


@torch.enable_grad()
def compare_ship(ship_main, official: nn.Module, backbone, classnames, pixels, labels) -> dict:
    """SHIP's VAE step with its official networks (Encoder, Generator, PromptLearner with its latent-dependent bias,
    TextEncoder, vae_loss; the step's glue replayed line for line from `run_vae_generator`, which runs the whole
    training and selects on test) against clipadapt's `Ship.loss`, from the same weights and the same noise, then
    `STEPS` steps of the official AdamW (lr 1e-3) on each side."""
    ours = Ship(backbone, ShipConfig())
    encoder = ship_main.Encoder(backbone.embed_dim)
    generator = ship_main.Generator(backbone.embed_dim, backbone.text_width)
    prompt_learner = ship_main.PromptLearner(list(classnames), official).float()
    text_encoder = ship_main.TextEncoder(official).float()
    with torch.no_grad():
        for theirs, mine in ((encoder.net, ours.model.encoder), (generator.net, ours.model.generator)):
            mine.load_state_dict(theirs.state_dict())
        ours.model.mean.load_state_dict(encoder.mean.state_dict())
        ours.model.log_var.load_state_dict(encoder.log_var.state_dict())
        ours.model.ctx.copy_(prompt_learner.ctx)
        features = backbone.encode_image(pixels)
        image_features = official.encode_image(pixels).float()
        image_features /= image_features.norm(dim=-1, keepdim=True)
    step = iter(range(STEPS))

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        seed = next(step)
        target = labels
        mean, log_var = encoder(image_features, None)
        std = torch.exp(0.5 * log_var)
        z = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
        z = std * z + mean
        bias = generator(z)
        prompt_learner.get_prefix_suffix_token(list(classnames), official)
        prompts = prompt_learner(bias, target)
        tokenized_prompts = prompt_learner.tokenized_prompts
        text_features = text_encoder(prompts, tokenized_prompts[target])
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        theirs = ship_main.vae_loss(text_features, image_features, mean, log_var, target, None)
        return theirs, ours.loss(features, labels, classnames, noise=torch.Generator().manual_seed(seed))

    official_parameters = [*encoder.parameters(), *generator.parameters(), prompt_learner.ctx]
    model = ours.model
    our_parameters = [*model.encoder.parameters(), *model.mean.parameters(), *model.log_var.parameters()]
    our_parameters += [*model.generator.parameters(), model.ctx]
    found = optimizer_steps((official_parameters, our_parameters), losses, "AdamW", {"lr": 1e-3})
    return {"batch": len(labels), **found}


@torch.no_grad()
def compare_lpclip(coop: Path, official: nn.Module, backbone, shots: int = TIP_SHOTS) -> dict:
    """CoOp's lpclip (`lpclip/linear_probe.py`, run as released: scikit-learn's LogisticRegression, its coarse sweep of
    C and 8 halving steps on val) on the official model's raw features of a k-shot subset, against clipadapt's
    linear_probe on ours. lpclip draws its own subset from the train.npz it is given: given exactly the k-shot subset
    (and the val subset), its draw at k shots is that subset, reordered. Needs scikit-learn (not a clipadapt
    dependency: `pip install scikit-learn`)."""
    splits = load_dataset(TIP_DATASET)
    subset = fewshot(splits, shots, 1, sampler="dassl")
    found: dict = {"dataset": TIP_DATASET, "shots": shots}
    features = {}
    for split in ("train", "val", "test"):
        loader = DataLoader(ImageDataset(subset.split(split), backbone.image_transform()), batch_size=256)
        batches = [(official.encode_image(x).float(), backbone.encode_image(x).float(), y) for x, y, _ in loader]
        features[split] = [torch.cat([b[i] for b in batches]) for i in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "feat" / "target"
        folder.mkdir(parents=True)
        for split, (theirs, _, labels) in features.items():
            numpy.savez(folder / f"{split}.npz", feature_list=theirs.numpy(), label_list=labels.numpy())
        script = (coop / "lpclip" / "linear_probe.py").absolute()
        command = [sys.executable, str(script), "--dataset", "target", "--feature_dir", "feat", "--num_run", "1"]
        printed = subprocess.run(command, cwd=tmp, check=True, capture_output=True, text=True).stdout
        details = (Path(tmp) / "report" / "feat_s8r1_details.txt").read_text()
    last = [line for line in details.splitlines() if f", {shots} shot," in line][-1]
    weight, accuracy = re.search(r"weight ([\d.e+-]+), test_acc ([\d.]+)", last).groups()
    probe = build_method("linear_probe", backbone, {})
    _, ours, labels = zip(*(features[split] for split in ("train", "val", "test")))
    summary = probe.fit(
        FeatureSet(ours[0], labels[0]), splits.classnames, val=FeatureSet(ours[1], labels[1]), progress=False
    )
    predictions = probe.logits(ours[2], splits.classnames).argmax(-1)
    # lpclip prints each run's coarse sweep (val accuracy per C of its search list), shots 1, 2, 4, 8, 16 in turn.
    sweeps = [line for line in printed.splitlines() if line.startswith("[")]
    coarse = [100 * float(v) for v in re.findall(r"\d+\.\d+(?:e-?\d+)?", sweeps[(1, 2, 4, 8, 16).index(shots)])]
    found["C of the coarse sweep"] = list(COARSE_C_GRID)
    found["official: coarse val accuracies"] = coarse
    found["ours: coarse val accuracies"] = [probe.val_accuracies[c] for c in COARSE_C_GRID]
    found["official: C, test accuracy"] = [float(weight), float(accuracy)]
    found["ours: C, test accuracy"] = [summary["best_c"], (predictions == labels[2]).float().mean().item() * 100]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coop", type=Path, required=True, help="a clone of KaiyangZhou/CoOp")
    parser.add_argument("--clip-adapter", type=Path, required=True, help="a clone of gaopengcuhk/CLIP-Adapter")
    parser.add_argument("--tip-adapter", type=Path, required=True, help="a clone of gaopengcuhk/Tip-Adapter")
    parser.add_argument("--ship", type=Path, required=True, help="a clone of mrflogs/SHIP")
    parser.add_argument("--dataset", default="world:objects")
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    clones = (
        (args.coop, "KaiyangZhou/CoOp", "trainers/coop.py"),
        (args.clip_adapter, "gaopengcuhk/CLIP-Adapter", "clip_adapter.py"),
        (args.tip_adapter, "gaopengcuhk/Tip-Adapter", "main.py"),
        (args.ship, "mrflogs/SHIP", "main_coop_vae.py"),
    )
    for clone, repository, needed in clones:
        if not (clone / needed).is_file():
            parser.error(f"{clone} is not a clone of {repository} (no {needed})")
    torch.set_num_threads(1)
    found = compare(args.coop, args.clip_adapter, args.tip_adapter, args.ship, args.dataset, args.images)

    def commit(clone: Path) -> str | None:
        return (
            subprocess.run(
                ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            or None
        )

    record = {
        "coop_commit": commit(args.coop),
        "clip_adapter_commit": commit(args.clip_adapter),
        "tip_adapter_commit": commit(args.tip_adapter),
        "ship_commit": commit(args.ship),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": "the shipped tiny-vit-world-unicl",
        **found,
    }
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
