"""From per-example values of every seed to the typed results: estimates, Rec2FTP, weight space, warnings.

Every estimate gets the (seeds, examples[, layers]) table of its values, so its interval resamples demonstration
seeds and evaluation examples together (`statistics`).
"""

from __future__ import annotations

import numpy as np

from .collect import SeedValues
from .config import AnalysisConfig
from .metrics import rec2ftp
from .results import ComparisonResult, ModelResult, OrderResult, WeightSpace
from .statistics import accuracy_estimate, estimate
from .variants import FT_VARIANTS


def _weight_space(per_seed: list[list[list[float]] | None]) -> WeightSpace | None:
    cosines = [c for c in per_seed if c is not None]
    if not cosines:
        return None
    array = np.array(cosines, dtype=float)  # (seeds, L, heads)
    return WeightSpace(
        mean=float(array.mean()),
        per_layer=array.mean(axis=(0, 2)).tolist(),
        per_layer_head=array.mean(axis=0).tolist(),
        per_seed=array.mean(axis=(1, 2)).tolist(),
    )


def summarize_model(
    seeds: list[SeedValues],
    config: AnalysisConfig,
    *,
    weights: dict[str, list],
    losses: dict[str, list[list[float]]],
    info: dict[str, list[dict]],
    order: list[dict] | None = None,
) -> ModelResult:
    """One model's `ModelResult` from its seeds' per-example values (every seed saw the same examples)."""
    kw = {"n_resamples": config.n_resamples, "seed": config.bootstrap_seed}

    def stack(get):
        return np.stack([np.asarray(get(s), dtype=float) for s in seeds])

    zsl, icl = stack(lambda s: s.zsl_correct), stack(lambda s: s.icl_correct)
    comparisons = {}
    for name in seeds[0].variants:
        ft = stack(lambda s, n=name: s.variants[n].correct)
        fixed = rec2ftp(zsl.ravel(), icl.ravel(), ft.ravel())  # pooled over seeds, as counts
        per_layer = {
            metric: stack(lambda s, n=name, m=metric: s.variants[n].per_layer[m])
            for metric in seeds[0].variants[name].per_layer
        }
        comparisons[name] = ComparisonResult(
            variant=name,
            label=FT_VARIANTS[name].label,
            accuracy_ft=accuracy_estimate(ft.astype(bool), **kw),
            rec2ftp=fixed.value,
            rec2ftp_counts=[fixed.n_ft_corrected, fixed.n_both_corrected],
            simaou=estimate(per_layer["simaou"], **kw),
            simaou_shuffled_null=estimate(per_layer["simaou_shuffled_null"], **kw),
            simam_after=estimate(per_layer["simam_after"], **kw),
            delta_simam=estimate(per_layer["delta_simam"], **kw),
            kendall=estimate(per_layer["kendall"], **kw),
            kendall_random=estimate(per_layer["kendall_random"], **kw),
            kendall_pre_rotary=estimate(per_layer["kendall_pre_rotary"], **kw),
            topk_recall=estimate(per_layer["topk_recall"], **kw),
            topk_random=estimate(per_layer["topk_random"], **kw),
            output_kl=estimate(stack(lambda s, n=name: s.variants[n].output_kl), **kw),
            output_topk=estimate(stack(lambda s, n=name: s.variants[n].output_topk), **kw),
            weight_space=_weight_space(weights.get(name, [])),
            ft_losses=losses.get(name, []),
            info=info.get(name, []),
        )
    order_result = None
    if order:
        order_result = OrderResult(
            orders=1 + config.order_permutations,
            icl_flip_rate=accuracy_estimate(np.stack([o["icl"][0] for o in order]), **kw),
            ft_flip_rate=accuracy_estimate(np.stack([o["ft"][0] for o in order]), **kw),
            icl_gold_prob_std=estimate(np.stack([o["icl"][1] for o in order]), **kw),
            ft_gold_prob_std=estimate(np.stack([o["ft"][1] for o in order]), **kw),
        )
    return ModelResult(
        accuracy_zsl=accuracy_estimate(zsl.astype(bool), **kw),
        accuracy_icl=accuracy_estimate(icl.astype(bool), **kw),
        simam_before=estimate(stack(lambda s: s.simam_before), **kw),
        simaou_uniform_null=estimate(stack(lambda s: s.simaou_uniform_null), **kw),
        simaou_gaussian_null=estimate(stack(lambda s: s.simaou_gaussian_null), **kw),
        output_kl_zsl=estimate(stack(lambda s: s.output_kl_zsl), **kw),
        output_topk_zsl=estimate(stack(lambda s: s.output_topk_zsl), **kw),
        comparisons=comparisons,
        order=order_result,
    )


def warnings_for(model: str, seeds: list[int], values: list[SeedValues], task) -> list[str]:
    """What the reader must know: FT that collapsed to one class, a label control equal to the main run."""
    out = []
    for seed, seed_values in zip(seeds, values, strict=True):
        several_classes = len(set(seed_values.gold)) > 1
        zsl_collapsed = len(set(seed_values.zsl_predicted)) == 1
        for name, variant in seed_values.variants.items():
            classes = set(variant.predicted)
            if several_classes and len(classes) == 1:
                word = task.label_words[next(iter(classes))]
                cause = (
                    "as ZSL does: the model itself predicts one class"
                    if zsl_collapsed
                    else "the update collapsed to one class (the learning rate may be too high)"
                )
                out.append(
                    f"{model}, seed {seed}: FT ({name}) predicts {word!r} for every evaluation example, {cause}; its "
                    "similarities describe a degenerate model."
                )
        main = seed_values.variants.get("gd")
        # Random labels can all come out gold by chance (1/2^k on a binary task): the per-seed table shows it.
        controls = (
            ("random_label", "random-label", " or kept their gold labels"),
            ("flipped_label", "flipped-label", ""),
        )
        for name, words, chance in controls:
            control = seed_values.variants.get(name)
            if main is None or control is None or main.predicted != control.predicted:
                continue
            a = np.asarray(main.per_layer["simaou"], dtype=float)
            b = np.asarray(control.per_layer["simaou"], dtype=float)
            if np.allclose(a, b, atol=1e-6, equal_nan=True):
                out.append(
                    f"{model}, seed {seed}: the {words} control equals the main run (same predictions and "
                    f"SimAOU): its labels did not change the update{chance}, so it cannot serve as a control here."
                )
    return out


__all__ = ["summarize_model", "warnings_for"]
