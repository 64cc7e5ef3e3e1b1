"""`avn ablation`: the staging ablation of the paper's Table VI.

The staging classifier is trained under several variants that differ only in how the training,
validation and T-set crops are cut, all else held equal (profile, folds, seed, epochs and the same
view-model trunk every staging model starts from):

* ``no-detection``: every head is cut from a fixed predefined region of the radiograph instead of
  its femoral-head box (``FIXED_REGIONS`` below; N of the profile), so the model must find the
  head inside a larger, badly centred window: what AVN-net would see without its detector;
* ``N=2``, ``N=3``, ``N=5``, ``N=10``, ``N=20``: crops around the head box, each training head
  resampled N times (2N for typical heads) with s spaced over [0.85, 1.05].

"With detection" uses the annotated head boxes, which the detector reproduces tightly (every
detected head of the quick T-set has IoU > 0.7); the variable under study is the crop, not the
detector's misses. Each variant's deployed fold (best validation score) is scored on the T-set:
macro F1 over the four stages with a bootstrap CI, per-stage F1, and paired-bootstrap p-values
against ``no-detection`` and against the profile's N (``avn.evaluation.significance``: the same
resampled T-set heads for both models). Results are resumable: a finished variant is not retrained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avn.dataset.format import FemoralHeadAnnotation, ImageRecord
from avn.evaluation.bootstrap import DEFAULT_RESAMPLES, bootstrap_ci, macro_f1_rows
from avn.evaluation.html import Report, figure_png, format_ci, format_p, markdown_table, pyplot
from avn.evaluation.significance import PAIRED_METHOD, paired_bootstrap
from avn.metrics import to_jsonable
from avn.models.checkpoint import load_checkpoint
from avn.models.classifier import build_classifier, normalised_batch
from avn.paper import PAPER_ABLATION
from avn.training.classifier_loop import fit_classifier, predict
from avn.training.head_data import BoxSource, CropSet, annotated_box, build_crops, serving_scale, training_scales
from avn.training.losses import FocalLoss
from avn.training.profiles import Profile
from avn.training.runner import MODEL_FILE, TrainingContext, prepare_context, train
from avn.vocabulary import STAGES

RESAMPLE_COUNTS = (2, 3, 5, 10, 20)
NO_DETECTION = "no-detection"
BUDGETS = ("equal-epochs", "equal-steps")

# The predefined regions of the "without detection" variant, as fractions of the radiograph:
# centre (x / width, y / height) per patient side (the patient's right hip lies on the image's
# left), and the square's side as a fraction of the image height. They are the mean head centres
# of the phantom's radiographs (AP and FL alike, both about 0.49 of the height; x 0.30 / 0.69)
# with a side of about 1.5 head diameters (a head spans about 0.15 of the height), so that the
# head usually lies inside the window despite pose, collimation and size. Defined once, never fit.
FIXED_REGIONS = {"right": (0.30, 0.49), "left": (0.69, 0.49)}
FIXED_REGION_SIDE = 0.22
FIGURE_FILE = "ablation_f1.png"


@dataclass(frozen=True)
class Variant:
    name: str
    fixed_regions: bool  # True: predefined regions; False: the head box
    resamples: int  # N


@dataclass
class AblationOptions:
    data: Path
    out: Path
    profile: Profile
    seed: int = 0
    resample_counts: tuple[int, ...] = RESAMPLE_COUNTS
    include_no_detection: bool = True
    epochs: int | None = None  # staging epochs per variant (None: the profile's)
    budget: str = "equal-epochs"
    bootstrap_resamples: int = DEFAULT_RESAMPLES
    view_model: Path | None = None  # an existing view checkpoint to start staging from
    folds: int | None = None
    repeats: int | None = None
    reporter: Callable[[str, int, int, dict[str, float]], None] | None = None
    logger: Callable[[str], None] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def fixed_region_box(image: ImageRecord, annotation: FemoralHeadAnnotation) -> tuple[float, float, float, float]:
    """The predefined square of the head's side, ignoring where the head really is."""
    fx, fy = FIXED_REGIONS[annotation.side]
    half = FIXED_REGION_SIDE * image.height / 2.0
    cx, cy = fx * image.width, fy * image.height
    return (cx - half, cy - half, cx + half, cy + half)


def ablation_variants(profile: Profile, resample_counts: tuple[int, ...], include_no_detection: bool) -> list[Variant]:
    variants = [Variant(NO_DETECTION, True, profile.resamples)] if include_no_detection else []
    counts = sorted(set(resample_counts) | {profile.resamples})  # the reference is always trained
    return variants + [Variant(f"N={n}", False, n) for n in counts]


def variant_epochs(options: AblationOptions, variant: Variant) -> int:
    """Staging epochs of a variant. ``equal-epochs`` is the paper's design; ``equal-steps`` gives
    every variant about the optimiser steps of the profile's N (fewer epochs for larger N), a
    reduced run whose CPU cost does not grow with N."""
    epochs = options.epochs or options.profile.epochs["staging"]
    if options.budget == "equal-steps":
        return max(1, int(round(epochs * options.profile.resamples / variant.resamples)))
    return epochs


# ------------------------------------------------------------------------------------ running


def run_ablation(options: AblationOptions) -> dict[str, Any]:
    """Train (or reload) every variant, score them on the T-set and write the report files."""
    if options.budget not in BUDGETS:
        raise ValueError(f"unknown budget {options.budget!r}; expected one of {BUDGETS}")
    started = time.perf_counter()
    context = prepare_context(
        options.data,
        options.out,
        options.profile,
        options.seed,
        options.folds,
        options.repeats,
        reporter=options.reporter,
        logger=options.logger,
    )
    trunk = _staging_start(context, options)
    variants = ablation_variants(options.profile, options.resample_counts, options.include_no_detection)
    to_train = [v for v in variants if not _result_path(options, v).exists()]
    if to_train:
        _log(options, _estimate_text(context, options, to_train))
    held = {}
    results = {}
    for number, variant in enumerate(variants, start=1):
        _log(options, f"variant {number}/{len(variants)}: {variant.name} ({variant_epochs(options, variant)} epochs)")
        source = fixed_region_box if variant.fixed_regions else annotated_box
        if variant.fixed_regions not in held:
            held[variant.fixed_regions] = _held_out_crops(context, source)
        variant_started = time.perf_counter()
        results[variant.name] = _train_variant(context, options, variant, source, held[variant.fixed_regions], trunk)
        options.timings[variant.name] = round(time.perf_counter() - variant_started, 1)
    document = analyse(results, options.profile, options.bootstrap_resamples, options.seed)
    document["settings"] = _settings(options, variants)
    document["seconds"] = {"total": round(time.perf_counter() - started, 1), **options.timings}
    write_outputs(document, options.out)
    return document


def _staging_start(context: TrainingContext, options: AblationOptions) -> dict[str, torch.Tensor]:
    """The view model's weights every variant starts from (SPEC §2), trained once if not given."""
    path = options.view_model
    if path is None:
        train(["view"], context)
        path = context.run_dir / "view" / MODEL_FILE
    model, card = load_checkpoint(path)
    if card.task != "view" or card.input_size != options.profile.input_size:
        raise ValueError(
            f"{path}: need a view model at {options.profile.input_size} px, got {card.task} at {card.input_size} px"
        )
    return model.state_dict()


def _held_out_crops(context: TrainingContext, source: BoxSource) -> CropSet:
    dataset = context.dataset
    wanted = sorted(set(dataset.splits["train"]) | set(dataset.splits["test"]))
    return build_crops(context.data_dir, dataset, wanted, context.profile.input_size, serving_scale, box_of=source)


def _train_variant(
    context: TrainingContext,
    options: AblationOptions,
    variant: Variant,
    source: BoxSource,
    held: CropSet,
    trunk: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """T-set truth and probabilities of the variant's deployed fold (cached in ``result.json``)."""
    result_path = _result_path(options, variant)
    variant_dir = result_path.parent
    if result_path.exists():
        return json.loads(result_path.read_text())
    dataset, profile = context.dataset, context.profile
    started = time.perf_counter()
    progress = {"images": 0}
    train_images = sum(image.subject_id in set(dataset.splits["train"]) for image in dataset.images)

    def on_image() -> None:
        progress["images"] += 1
        context.report(f"{variant.name}: cropping", progress["images"], train_images)

    pool = build_crops(
        context.data_dir,
        dataset,
        dataset.splits["train"],
        profile.input_size,
        training_scales(variant.resamples),
        on_image=on_image,
        box_of=source,
    )
    test = held.select_subjects(dataset.splits["test"])
    epochs = variant_epochs(options, variant)
    folds = []
    for fold in context.folds:
        train_set, val_set = pool.select_subjects(fold.train_subjects), held.select_subjects(fold.val_subjects)
        per_epoch = max(1, -(-len(train_set) // profile.batch_size))
        steps = {"n": 0}

        def on_step(
            figures: dict[str, float], *, label=f"{variant.name} {fold.name}", steps=steps, total=per_epoch * epochs
        ) -> None:
            steps["n"] += 1
            context.report(label, steps["n"], total, **figures)

        fit = fit_classifier(
            "staging",
            train_set,
            val_set,
            profile,
            variant_dir / "folds" / fold.name,
            context.seed * 1000 + fold.repeat * 100 + fold.index,
            init_state=trunk,
            on_step=on_step,
            on_epoch=lambda entry, name=fold.name: context.log_epoch(f"{variant.name} {name}", entry),
            epochs=epochs,
        )
        folds.append(
            {
                "fold": fold.name,
                "val_score": fit.best_score,
                "best_epoch": fit.best_epoch,
                "train_crops": len(train_set),
                "test_probabilities": predict(fit.model, test.crops).tolist(),
            }
        )
    best = max(folds, key=lambda doc: doc["val_score"])
    result = {
        "variant": variant.name,
        "fixed_regions": variant.fixed_regions,
        "resamples": variant.resamples,
        "epochs": epochs,
        "deployed_fold": best["fold"],
        "test_annotation_ids": [head.annotation_id for head in test.heads],
        "test_truth": test.labels("staging").tolist(),
        "test_probabilities": best["test_probabilities"],
        "folds": [{k: v for k, v in doc.items() if k != "test_probabilities"} for doc in folds],
        "fold_macro_f1": [
            _macro_f1(test.labels("staging"), np.asarray(doc["test_probabilities"]).argmax(1)) for doc in folds
        ],
        "seconds": round(time.perf_counter() - started, 1),  # cropping + training + T-set prediction
    }
    variant_dir.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(to_jsonable(result)))
    return result


def _result_path(options: AblationOptions, variant: Variant) -> Path:
    return options.out / "variants" / variant.name / "result.json"


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(macro_f1_rows(np.asarray(truth)[None], np.asarray(predicted)[None], len(STAGES))[0])


# ------------------------------------------------------------------------------------ time estimate


def _estimate_text(context: TrainingContext, options: AblationOptions, variants: list[Variant]) -> str:
    """Training crops per variant (counted from the annotations) times a measured step time."""
    seconds_per_crop = measure_seconds_per_crop(options.profile)
    train_subjects = set(context.dataset.splits["train"])
    images = {image.id: image for image in context.dataset.images}
    heads = [a for a in context.dataset.annotations if images[a.image_id].subject_id in train_subjects]
    typical = sum(a.typical for a in heads)
    # Each fold trains on (k-1)/k of the training subjects.
    share = sum(len(f.train_subjects) for f in context.folds) / max(len(train_subjects), 1)
    total, lines = 0.0, []
    for variant in variants:
        crops = (len(heads) + typical) * variant.resamples * share
        seconds = crops * variant_epochs(options, variant) * seconds_per_crop
        total += seconds
        lines.append(
            f"  {variant.name}: ~{crops:.0f} training crops × {variant_epochs(options, variant)} epochs"
            f" ≈ {seconds / 60:.1f} min"
        )
    return (
        f"estimated training time ({seconds_per_crop * 1000:.1f} ms per crop measured here, "
        f"{len(context.folds)} fold(s)): {total / 60:.0f} min\n" + "\n".join(lines)
    )


def measure_seconds_per_crop(profile: Profile, steps: int = 2) -> float:
    """Forward + backward time per crop of a staging model at the profile's input size."""
    model = build_classifier("staging")
    optimiser = torch.optim.Adam(model.parameters(), lr=profile.learning_rate)
    crops = np.random.default_rng(0).random((profile.batch_size, profile.input_size, profile.input_size))
    batch = normalised_batch(crops)
    target = torch.zeros(profile.batch_size, dtype=torch.long)
    criterion = FocalLoss(None, gamma=profile.focal_gamma)
    timings = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        optimiser.zero_grad()
        criterion(model(batch), target).backward()
        optimiser.step()
        timings.append(time.perf_counter() - started)
    return float(np.median(timings[1:])) / profile.batch_size


# ------------------------------------------------------------------------------------ analysis


def analyse(results: dict[str, dict[str, Any]], profile: Profile, resamples: int, seed: int) -> dict[str, Any]:
    """Macro F1 with CI, per-stage F1 and p-values of every variant against the two references."""
    reference = f"N={profile.resamples}"
    statistic = _macro_f1_statistic
    ids = {name: result["test_annotation_ids"] for name, result in results.items()}
    order = ids[reference]
    rows = {}
    for name, result in results.items():
        if sorted(ids[name]) != sorted(order):
            raise ValueError(f"variant {name} was scored on other T-set heads than {reference}")
        truth, predicted = _aligned(result, order)
        ci = bootstrap_ci(statistic, truth, predicted, resamples=resamples, seed=seed)
        rows[name] = {
            "macro_f1": ci.to_dict(),
            "per_stage_f1": _per_stage_f1(truth, predicted),
            "fold_macro_f1": result.get("fold_macro_f1", []),
            "resamples": result["resamples"],
            "fixed_regions": result["fixed_regions"],
            "epochs": result["epochs"],
            "train_seconds": result.get("seconds"),
        }
    for name in results:
        truth, predicted = _aligned(results[name], order)
        for key, other in (("vs_no_detection", NO_DETECTION), ("vs_reference", reference)):
            if other in results and other != name:
                _, other_predicted = _aligned(results[other], order)
                rows[name][key] = paired_bootstrap(
                    statistic, truth, predicted, other_predicted, resamples, seed
                ).to_dict()
            else:
                rows[name][key] = None
    return {
        "reference": reference,
        "test_heads": len(order),
        "p_value_method": PAIRED_METHOD,
        "bootstrap_resamples": resamples,
        "seed": seed,
        "variants": rows,
        "paper": PAPER_ABLATION,
    }


def _macro_f1_statistic(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return macro_f1_rows(truth, predicted, len(STAGES))


def _aligned(result: dict[str, Any], order: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Truth and argmax prediction in the head order ``order`` (annotation ids)."""
    position = {head: i for i, head in enumerate(result["test_annotation_ids"])}
    index = np.array([position[head] for head in order])
    truth = np.asarray(result["test_truth"])[index]
    predicted = np.asarray(result["test_probabilities"]).argmax(axis=1)[index]
    return truth, predicted


def _per_stage_f1(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    values = f1_score(truth, predicted, labels=list(range(len(STAGES))), average=None, zero_division=0)
    return {stage: float(v) for stage, v in zip(STAGES, values, strict=True)}


def _settings(options: AblationOptions, variants: list[Variant]) -> dict[str, Any]:
    return {
        "data": str(options.data),
        "profile": options.profile.name,
        "input_size": options.profile.input_size,
        "seed": options.seed,
        "budget": options.budget,
        "epochs": {v.name: variant_epochs(options, v) for v in variants},
        "view_model": str(options.view_model) if options.view_model else "trained here (view/model.pt)",
        "fixed_regions": {"centres": FIXED_REGIONS, "side_fraction_of_height": FIXED_REGION_SIDE},
    }


# ------------------------------------------------------------------------------------ outputs


def table_rows(document: dict[str, Any]) -> list[list[str]]:
    """One row per variant: ours (phantom T-set) beside the paper's (real radiographs)."""
    rows = []
    for name, row in document["variants"].items():
        ci = row["macro_f1"]
        paper = document["paper"].get(name, {})
        rows.append(
            [
                name,
                format_ci(ci["estimate"], ci["low"], ci["high"]),
                format_p(row["vs_no_detection"]["p_value"]) if row["vs_no_detection"] else "–",
                format_p(row["vs_reference"]["p_value"]) if row["vs_reference"] else "–",
                " / ".join(f"{row['per_stage_f1'][s]:.2f}" for s in STAGES),
                format_ci(paper.get("f1"), *paper.get("ci", (None, None))) if paper else "—",
                paper.get("p_vs_no_detection", "—"),
                paper.get("p_vs_n5", "—"),
            ]
        )
    return rows


TABLE_HEADERS = (
    "variant",
    "macro F1 (95% CI), phantom T-set",
    "p vs no-detection",
    "p vs reference N",
    "F1 absence / II / III / IV",
    "paper F1 (95% CI), real radiographs",
    "paper p vs no-detection",
    "paper p vs N=5",
)


def write_outputs(document: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(to_jsonable(document), indent=1))
    table = markdown_table(TABLE_HEADERS, table_rows(document))
    (out / "table.md").write_text(table + "\n")
    png = figure_png(_f1_figure(document), out / FIGURE_FILE)
    report = Report("Staging ablation (Table VI): crops without detection and N resamples")
    report.paragraph(
        f"T-set of the data set {document['settings']['data']} ({document['test_heads']} femoral heads), profile "
        f"{document['settings']['profile']} ({document['settings']['input_size']} px crops), budget "
        f"{document['settings']['budget']}, staging epochs per variant {document['settings']['epochs']}. Reference N = "
        f"{document['reference']}. 95% CIs: percentile bootstrap over T-set heads, {document['bootstrap_resamples']} "
        f"resamples, seed {document['seed']}. p-values: {document['p_value_method']} of macro F1 "
        "(the paper used t-tests on bootstrap F1 values, see docs/ablation.md)."
    )
    report.table(
        TABLE_HEADERS, table_rows(document), caption="Ours: phantom T-set. Paper: real radiographs (Table VI)."
    )
    report.figure(
        png,
        "Figure: staging macro F1 on the T-set per variant with 95% bootstrap CI (ours, phantom) "
        "and the paper's Table VI values (real radiographs).",
    )
    regions = document["settings"]["fixed_regions"]
    report.paragraph(
        f"Fixed predefined regions (no-detection): centres {regions['centres']} as fractions of "
        f"(width, height) by patient side, square side {regions['side_fraction_of_height']} × image height."
    )
    report.write(out / "report.html")


def _f1_figure(document: dict[str, Any]):
    plt = pyplot()
    names = list(document["variants"])
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    x = np.arange(len(names))
    ours = [document["variants"][n]["macro_f1"] for n in names]
    estimate = np.array([c["estimate"] if c["estimate"] is not None else np.nan for c in ours])
    low = np.array([c["low"] if c["low"] is not None else np.nan for c in ours])
    high = np.array([c["high"] if c["high"] is not None else np.nan for c in ours])
    ax.errorbar(
        x - 0.1,
        estimate,
        yerr=[estimate - low, high - estimate],
        fmt="o",
        capsize=4,
        label="ours (phantom T-set), 95% CI",
    )
    paper = [document["paper"].get(n) for n in names]
    px = [i + 0.1 for i, p in enumerate(paper) if p]
    if px:
        py = [p["f1"] for p in paper if p]
        perr = [[p["f1"] - p["ci"][0] for p in paper if p], [p["ci"][1] - p["f1"] for p in paper if p]]
        ax.errorbar(px, py, yerr=perr, fmt="s", capsize=4, color="#a66b00", label="paper (real radiographs), 95% CI")
    ax.set_xticks(x, names)
    ax.set_xlabel("variant (crop source, resamples N per training head)")
    ax.set_ylabel("staging macro F1 (4 stages, unitless)")
    ax.set_title("Staging ablation: F1 without detection and with N resamples")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _log(options: AblationOptions, text: str) -> None:
    if options.logger:
        options.logger(text)
