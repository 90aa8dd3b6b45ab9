"""The tables of the benchmark results: one function per result file, ``benchmarks/results/NAME.json`` → markdown.

Used by the documentation build (``scripts/mkdocs_hooks.py``, which reads the JSON and imports no benchmark
script) and by the benchmarks themselves to write the ``.md`` beside their JSON, so the two never disagree.
Standard library only. :data:`TABLES` maps a result's name to its table and the command that measures it.
"""

from __future__ import annotations

import json
from collections.abc import Callable


def fraction_target(layer: str) -> float:
    """The share of the ceiling the ``fast`` step should reach at ``layer`` (the speed target)."""
    return 0.70 if layer == "blocks.1" else 0.80


def render_table(results: dict) -> str:
    """The table. The ceiling of a layer is the best (lowest) of the ceilings timed in all of that layer's
    processes: the machine's real speed, not one process's noisy timing. "× naive/step": the naive loop's
    seconds per step divided by the method's (above 1: each step is cheaper than the tutorial's)."""
    rows = [r for r in results["rows"] if "error" not in r]
    best = {}
    naive = {}
    for r in rows:
        key = (r["model"], r["layer"])
        if r.get("ceiling_s_per_step"):
            best[key] = min(best.get(key, float("inf")), r["ceiling_s_per_step"])
        if r["method"] == "naive":
            naive[key] = r["s_per_step"]
    lines = [
        f"Machine: {results['machine']}; device {results['device']}. Robust ratio: median over the channels "
        "of act(render under 90-100 % crops) / max act over the 36 bundled photos. Ceiling: forward+backward "
        "of the model truncated at the layer, batch 1, best timing in the run.",
        "",
        "| model | layer | method | steps | s/channel | s/step | × naive/step | % of ceiling | robust ratio "
        "| colourfulness | RMS contrast | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['layer']} | {r['method']} | {r['steps_asked']} | error: {r['error']} |||||||"
            )
            continue
        key = (r["model"], r["layer"])
        ceil = best.get(key)
        frac = f"{100 * ceil / r['s_per_step']:.0f} % of {ceil * 1000:.1f} ms" if ceil else ""
        vs = f"{naive[key] / r['s_per_step']:.2f}×" if key in naive else ""
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['method']} | {r['steps']:.0f} | {r['s_per_channel']:.2f} | "
            f"{r['s_per_step'] * 1000:.1f} ms | {vs} | {frac} | {r['median_robust_ratio']:.2f} | "
            f"{r.get('median_colourfulness', float('nan')):.1f} | {r.get('median_rms_contrast', float('nan')):.3f} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _ok(flag: bool | None) -> str:
    return "not measured" if flag is None else ("**met**" if flag else "**not met**")


def targets_table(res: dict) -> str:
    lines = [f"Machine: {res['machine']}. `python benchmarks/bench_targets.py`: {res['seconds'] / 60:.1f} min."]
    # ``remeasured``: sections run again later with --only and merged into targets.json by hand (the run's
    # own seconds and machine stay the first run's)
    for section, again in res.get("remeasured", {}).items():
        lines[0] += f" Section `{section}` measured again ({again['why']}): {again['seconds'] / 60:.1f} min."
    lines.append("")
    lines += ["| # | target | measured | |", "|---|---|---|---|"]
    lay = res.get("layout")
    if lay:
        rows = {r["layout"]: r for r in lay["rows"] if "error" not in r}
        names = list(rows)
        faster = min(names, key=lambda n: rows[n]["render_s"]) if len(names) == 2 else None
        auto = lay["auto_for_measured"]
        auto_is_procs = "process" in auto and not auto.startswith("1 process")
        faster_is_procs = faster is not None and not faster.startswith("1 process")
        txt = "; ".join(f"{n}: {rows[n]['render_s']:.1f} s" for n in names)
        lines.append(
            f"| 1 | default layout is the faster one ({lay['layer']}, {lay['rows'][0].get('channels')} channels) | "
            f"{txt}; default picks {auto}; for 784 channels: {lay['auto_for_atlas']} | "
            f"{_ok(faster is not None and auto_is_procs == faster_is_procs)} |"
        )
    for row in res.get("quality", []):
        layer, fast, prev = row["layer"], row.get("fast", {}), row.get("previous")
        if prev is None or "error" in fast or "error" in prev:
            continue
        # the layer's ceiling is the lowest timed in any of its processes (the machine's real speed; one process's
        # timing can be slow and would flatter the fraction); the same for the folded net
        runs = [r for r in (fast, prev, row.get("lucid", {})) if r.get("ceiling_s_per_step")]
        ceil = min(r["ceiling_s_per_step"] for r in runs)
        ceil_net = min(r["ceiling_net_s_per_step"] for r in runs if r is not prev)
        frac, frac_prev = ceil / fast["s_per_step"], ceil / prev["s_per_step"]
        fixed_after = (fast["s_per_step"] - ceil_net) * 1000
        fixed_before = (prev["s_per_step"] - ceil) * 1000
        lines.append(
            f"| 2 | `fast` at {layer} ≥ {fraction_target(layer):.0%} of the ceiling | "
            f"{frac:.1%} ({fast['s_per_step'] * 1000:.1f} ms/step, ceiling {ceil * 1000:.1f} ms; "
            f"previous release {frac_prev:.1%}, {prev['s_per_step'] * 1000:.1f} ms/step). Fixed cost "
            f"(step − ceiling of the net the loop runs): {fixed_after:.1f} ms, previous {fixed_before:.1f} ms "
            f"({fixed_before / max(fixed_after, 1e-9):.2f}× smaller) | {_ok(frac >= fraction_target(layer))} |"
        )
    for row in res.get("quality", []):
        layer, fast, luc = row["layer"], row.get("fast", {}), row.get("lucid", {})
        if "error" in fast or "error" in luc:
            lines.append(f"| 3 | quality at {layer} | error: {fast.get('error') or luc.get('error')} | |")
            continue
        key = "median_robust_pre_relu" if layer == "bn2" else "median_robust_ratio"
        what = "robust mean pre-activation, ReLU6 caps the output" if layer == "bn2" else "robust ratio"
        ratio = luc["s_per_channel"] / fast["s_per_channel"]
        lines.append(
            f"| 3 | `fast` ≥ Lucid-512 at {layer} ({what}) in ≤ 1/8 of its time | "
            f"median {fast[key]:.2f} vs {luc[key]:.2f}; "
            f"{fast['s_per_channel']:.2f} vs {luc['s_per_channel']:.2f} s/channel (1/{ratio:.1f}) | "
            f"{_ok(fast[key] >= luc[key] and ratio >= 8)} |"
        )
    cl = res.get("classes")
    if cl and "error" not in cl:
        t1, t5 = sum(cl["top1"]) / len(cl["top1"]), sum(cl["top5"]) / len(cl["top5"])
        lines.append(
            f"| 3 | class renders ≥ 90 % top-1 on efficientnet_lite1 ({len(cl['classes'])} classes) | "
            f"`{cl.get('method', 'fast')}`: top-1 {t1:.0%}, top-5 {t5:.0%}, {cl['s_per_class']:.1f} s/class | "
            f"{_ok(t1 >= 0.9)} |"
        )
    at = res.get("atlas")
    if at:
        if "error" in at:
            lines.append(f"| 4 | whole model ≤ 20 min | error: {at['error'][-200:]} | **not met** |")
        else:
            lines.append(
                f"| 4 | whole model (784 channels, blocks.0-6) ≤ 20 min | {at['wall_s'] / 60:.1f} min wall for "
                f"{at['channels']} channels, peak RSS {at['peak_rss_tree_mib']} MiB (all processes), layout "
                f"{at['layout']} | "
                f"{_ok(at['wall_s'] <= 20 * 60)} |"
            )
    ray = res.get("ray")
    if ray:
        lines.append(
            f"| 5 | Ray two-node fault test passes | {ray['summary']} ({ray['seconds']} s) | {_ok(ray['passed'])} |"
        )
    lines.append(f"| 6 | GPU | {res.get('gpu', 'no CUDA device on this machine')} | {_ok(None)} |")
    return "\n".join(lines) + "\n"


def explain_table(res: dict) -> str:
    lines = ["# bench_explain", ""]
    if "ablation" in res:
        lines += [
            "| layer | photos | median top-8 drop: contribution | activation | random | contribution / activation |",
            "|---|---|---|---|---|---|",
        ]
        for layer, d in res["ablation"].items():
            m = d["median_top8_drop"]
            lines.append(
                f"| {layer} | {d['photos']} | {m['contribution']:.3f} | {m['activation']:.3f} | {m['random']:.3f} "
                f"| {d['ratio_contribution_vs_activation']:.2f}× |"
            )
        lines.append("")
    if "accentuation" in res:
        a = res["accentuation"]
        lines += [
            f"Accentuation at {a['layer']} (strength {a['strength']:g}, {a['steps']} steps, top-3 filters by "
            f"contribution of each photo, {a['n']} filters): median gain {a['median_gain']:.2f}×, median SSIM "
            f"{a['median_ssim']:.3f}, gain ≥ 2 and SSIM ≥ 0.5 for {a['fraction_gain2_ssim05']:.0%}; "
            f"{a['seconds_per_accentuation']} s each.",
            "",
        ]
    if "accent_curve" in res:
        lines += ["| strength | median gain | median SSIM |", "|---|---|---|"]
        lines += [
            f"| {p['strength']:g} | {p['median_gain']:.2f} | {p['median_ssim']:.3f} |" for p in res["accent_curve"]
        ]
        lines.append("")
    if "path" in res:
        lines += ["| preset | median path similarity (blocks.5, 6 channels) |", "|---|---|"]
        lines += [f"| {m} | {d['median']:.3f} |" for m, d in res["path"].items()]
        lines.append("")
    return "\n".join(lines)


def accent_table(res: dict) -> str:
    lines = [
        "# bench_accent",
        "",
        f"efficientnet_lite0, {res.get('layer', 'blocks.5')}, top-3 filters by contribution per photo, "
        f"{res['steps']} steps; "
        f"machine: {res['machine']['cpu']} ({res['machine']['threads']} threads), torch {res['machine']['torch']}.",
        "",
        "| set | method | photos | filters | median SSIM | median gain | min SSIM | SSIM ≥ 0.8 "
        "| gain ≥ 2 & SSIM ≥ 0.8 | s / accentuation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in res["sets"].items():
        for m, v in d.items():
            lines.append(
                f"| {name} | {m} | {v['photos']} | {v['n']} | {v['median_ssim']:.3f} | {v['median_gain']:.2f}× "
                f"| {v['min_ssim']:.3f} | {v['fraction_ssim_08']:.0%} | {v['fraction_gain2_ssim08']:.0%} "
                f"| {v['seconds_per_accentuation']:.1f} |"
            )
    lines.append("")
    return "\n".join(lines)


def _half(cpu) -> str:
    """CPU seconds over 2 threads: the wall time the work would take on 2 free cores (an upper bound while
    threads spin)."""
    return f"{cpu / 2:.1f}" if cpu is not None else "—"


CIRCUIT_RANKINGS = {  # the rankings bench_circuits compares, by their key in circuits.json
    "weight": "old: abs. expanded weight",
    "attribution": "abs. attribution re-sort",
    "effect_single": "mean abs. removal effect",
    "attribution_image": "greedy on grad × act",
    "effect": "greedy on removal effects (default)",
}
CIRCUIT_ORDER = ["weight", "attribution", "effect_single", "attribution_image", "effect"]


def circuits_table(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# bench_circuits",
        "",
        f"efficientnet_lite0 on {m['threads']} CPU threads ({m['cpu']}); load average {m['load_start']} at the "
        f"start, {m['load_end']} at the end (the machine was shared with other jobs: times are upper bounds).",
        "",
    ]
    if "ranking" in res:
        rk = res["ranking"]
        lines += [
            f"Rankings made on {len(rk['rank_photos'])} of the 36 bundled photos, checked on the other "
            f"{len(rk['held_out_photos'])} (split seed {rk['split_seed']}): mean |change| of the channel with the "
            f"first {rk['k']} inputs listed zeroed, over the mean for {rk['k']} random inputs ({rk['n_random']} "
            f"draws); median (min) over 6 channels per layer drawn with seed {rk['channel_seed']}.",
            "",
            "| layer | from | channels | " + " | ".join(CIRCUIT_RANKINGS[r] for r in CIRCUIT_ORDER) + " | target |",
            "|---|---|---|" + "---|" * (len(CIRCUIT_ORDER) + 1),
        ]
        for layer, d in rk["layers"].items():
            target = {"blocks.5": "≥ 2×", "blocks.3": "≥ 2.5×"}.get(layer, "")
            cells = " | ".join(f"{d['median'][r]:.2f}× ({d['min'][r]:.2f})" for r in CIRCUIT_ORDER)
            lines.append(f"| {layer} | {d['from']} | {', '.join(map(str, d['channels']))} | {cells} | {target} |")
        lines.append("")
    if "handbuilt" in res:
        lines += [
            "Held-out hand-built nets (seeded; not the tests' nets): 6 inputs, 3 live, 2 blocked behind the largest "
            "weights (dead ReLU, ReLU6 saturated by its bias, closed squeeze-excite gate), or (cap) 2 that hold "
            "a ReLU6 at its cap and carry the filter most with a gradient of 0. Each cell: nets whose inputs that "
            "carry the filter are listed first / nets with a blocked input in the first two.",
            "",
            "| net | nets | " + " | ".join(CIRCUIT_RANKINGS[r] for r in CIRCUIT_ORDER) + " |",
            "|---|---|" + "---|" * len(CIRCUIT_ORDER),
        ]
        for kind, d in res["handbuilt"].items():
            cells = " | ".join(f"{d['carriers_first'][r]} / {d['blocked_in_first_two'][r]}" for r in CIRCUIT_ORDER)
            lines.append(f"| {kind} | {d['nets']} | {cells} |")
        lines.append("")
    for part, mm in res.get("machine_of", {}).items():
        lines += [
            f"The {part} part is from a separate run of this script on the same machine, the same day "
            f"(load average {mm['load_start']} → {mm['load_end']}).",
            "",
        ]
    if "timing" in res:
        t = res["timing"]
        p = t["circuit_blocks5_no_renders_parts_s"]
        lines += [
            "| measurement | wall seconds | CPU seconds of the process | target |",
            "|---|---|---|---|",
            f"| `filterscope circuit --layer blocks.5 --channel 42`, default renders (cold cache), all files "
            f"| {t['circuit_blocks5_with_renders_s']} | {t['circuit_blocks5_with_renders_cpu_s']} | ≤ 20 |",
            f"| the same, `--no-renders` | {t['circuit_blocks5_no_renders_s']} "
            f"| {t['circuit_blocks5_no_renders_cpu_s']} | |",
            f"| — of which attribution / removal effects / expanded weights / ablation | {p.get('attribution_s')} / "
            f"{p.get('removal_effects_s')} / {p.get('expanded_weights_s')} / {p.get('ablation_s')} | | |",
            f"| explorer tuning, first filter of {t['tuning_layer']} (1 thread) | {t['tuning_first_filter_s']} "
            f"| {t['tuning_first_filter_cpu_s']} | |",
            f"| explorer tuning, second filter, in the other worker (responses from "
            f"{'/'.join(t['tuning_second_filter_responses_from'])}) | {t['tuning_second_filter_s']} "
            f"| {t['tuning_second_filter_cpu_s']} | ≤ 3 |",
            "",
        ]
    return "\n".join(lines)


def gpu_table(res: dict) -> str:
    if "layers" not in res:
        return res.get("status", "not run") + "\n"
    out = [
        f"Machine: {res['machine']}; device {res.get('gpu', res['device'])}; {res['steps']} steps for every method "
        "but the last `lucid` row of a layer (Lucid's own step count, the quality reference).",
        "",
        "| layer | method | steps | batch | channels/min | measure | median | colourfulness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layer, d in res["layers"].items():
        out += [
            f"| {layer} | {r['variant']} | {r.get('steps', res['steps'])} | {r['batch']} | "
            f"{r['channels_per_min']:.1f} | {r['measure']} | "
            f"{r['median']:.2f} | {r['median_colourfulness']} |"
            for r in d["rows"]
        ]
    out += ["", "bfloat16 kept (median ≥ 98 % of float32's): "]
    out[-1] += ", ".join(f"{layer} {'yes' if d['bfloat16_kept'] else 'no'}" for layer, d in res["layers"].items())
    return "\n".join(out) + "\n"


def serve_table(res: dict) -> str:
    c20 = res["cached_20_clients"]
    rows = [
        (
            "cached page/image, 20 clients, p95",
            "≤ 100 ms",
            f"{c20['p95_ms']} ms (p50 {c20['p50_ms']} ms, {c20['requests']} requests, {c20['requests_per_s']} req/s)",
        ),
        (
            "first render at blocks.5 (fast), request → picture",
            "≤ 3 s",
            ", ".join(f"{x:.2f}" for x in res["first_render_blocks5_s"]) + " s",
        ),
        ("cached render", "≤ 0.2 s", ", ".join(f"{1000 * x:.0f}" for x in res["cached_render_s"]) + " ms"),
        ("explanation of an uploaded photo (blocks.5)", "≤ 30 s", f"{res['explanation_s']:.2f} s"),
        (
            "peak memory, server + manager + workers",
            "≤ 3 GB",
            f"PSS {res['peak_pss_gb']:.2f} GB (sum of RSS {res['peak_rss_gb']:.2f} GB)",
        ),
        ("server start (model + workers warm)", "", f"{res['startup_s']:.1f} s"),
    ]
    lines = [f"Workers: {res.get('workers', '?')}.", "", "| measure | target | measured |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def layout_table(res: dict) -> str:
    lines = [
        f"Layer `{res['layer']}`.",
        "",
        "| layout | channels | render s | wall s | channels/min |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['layout']} | error: {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['layout']} | {r['channels']} | {r['render_s']:.1f} | {r['wall_s']:.1f} "
                f"| {r['channels_per_min']:.1f} |"
            )
    lines += ["", f"Processes against threads: {res['speedup_processes']:.2f}× the channels per second."]
    return "\n".join(lines) + "\n"


def serve_guard_table(res: dict) -> str:
    cp, jr = res["cached_pages"], res["job_requests_during"]
    lines = [
        f"{res['machine']}, `filterscope serve --model {res['model']} --workers 1 --max-jobs {res['max_jobs']}` on "
        f"127.0.0.1, the bound filled by {res['max_jobs']} renders; {cp['clients']} clients fetch cached pages and "
        f"images while {jr['sent']} job requests arrive under made-up client cookies.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| cached requests (200) | {cp['ok']} / {cp['requests']} |",
        f"| cached p50 / p95 / max | {cp['p50_ms']} / {cp['p95_ms']} / {cp['max_ms']} ms "
        f"(target p95 ≤ {res['target_p95_ms']} ms) |",
        f"| cached requests per second | {cp['requests_per_s']} |",
        f"| job requests refused 429 (with Retry-After) | {jr['refused_429']} ({jr['with_retry_after']}) "
        f"of {jr['sent']} |",
        f"| job requests accepted | {jr['accepted']} |",
        f"| machine load average (1 min) at the end | {res['load_average_1min']} |",
    ]
    return "\n".join(lines) + "\n"


def concepts_table(res: dict) -> str:
    m, mach, setup, met = res["main"], res["machine"], res["setup"], res["targets"]
    lines = [
        f"Machine: {mach['cpus']} CPUs ({mach['platform']}), torch threads {mach['torch_threads']}; load average "
        f"at start {mach['load_average_at_start']}, at end {res['load_average_at_end']} (a shared machine: "
        "times are upper bounds).",
        "",
        f"{setup['images']} images at {setup['size']} px, efficientnet_lite0 · {setup['layer']}, {setup['concepts']} "
        f"concepts (nmf), `{setup['render']}` renders, cache off.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| wall time | {m['wall_s']} s | ≤ 120 s | {met['wall_s ≤ 120']} |",
        f"| peak RSS | {m['peak_rss_gb']} GB | ≤ 2 GB | {met['peak ≤ 2 GB']} |",
        f"| seconds per image (passes, no renders) | {m['s_per_image_passes']} | | |",
        f"| seconds per concept (render) | {m['s_per_concept_render']} | | |",
        f"| ablation: top-3 vs 3 random, median drop of p | {m['ablation']['top3_median_drop']} vs "
        f"{m['ablation']['random3_median_drop']} ({m['ablation']['ratio']}×, {m['ablation']['images']} images) "
        f"| ≥ 2× | {met['ablation ratio ≥ 2']} |",
        f"| stability: median matched cosine (seed 1 vs 0) | {m['stability_median_cosine']} | ≥ 0.8 | "
        f"{met['stability ≥ 0.8']} |",
        f"| reconstruction keeps top-1: class images (all images) | {m['reconstruction_top1']:.1%} "
        f"({m['reconstruction_top1_all_images']:.1%}) | ≥ 90 % | {met['reconstruction top-1 ≥ 90 %']} |",
        f"| explained variance | {m['explained_variance']} | | |",
        "",
        f"Timings (s): {m['timings']}",
        "",
        "Activation pass + evidence pass + deletion curves by images (the dictionary fit is on at most 16,384 "
        "vectors whatever the folder; 50 images also fit semi-NMF): "
        + ", ".join(f"{k}: {v} s" for k, v in res["cost_s_by_images_no_renders"].items()),
        "",
        f"NMF vs semi-NMF on the same vectors (50 images): {json.dumps(res.get('methods_50_images'))}",
        "",
        f"Class: {m['class']} ({m['class_images']} class images). Concepts: "
        + "; ".join(f"{c['concept']}: {c['label']} (imp {c['importance']}, drop {c['drop']})" for c in m["concepts"]),
    ]
    return "\n".join(lines) + "\n"


# result file → (its table, the command that writes it)


def dictionary_table(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# dictionary benchmark",
        "",
        f"Machine: {m['cpus']} CPUs ({m['platform']}), torch threads {m['torch_threads']}. Each part's load "
        "average at its start and end (above 2, the machine was shared and its timings are upper bounds): "
        + "; ".join(f"{part} {x['load_start']} → {x.get('load_end')}" for part, x in r.get("machines", {}).items())
        + ".",
        "",
    ]
    if "planted" in r:
        lines += ["## Held-out planted nets (8 detectors in 4 channels)", ""]
        lines += ["| seed | recovered | named right | raw channels recover | detector score | mixed channel score |"]
        lines += ["|---|---|---|---|---|---|"]
        for p in r["planted"]:
            lines.append(
                f"| {p['seed']} | {p['recovered']}/{p['planted']} | {p['named_right']}/{p['planted']} | "
                f"{p['channels_recovered']}/{p['planted']} | {p['detector_score_mean']} | "
                f"{p['mixed_channel_score_mean']} |"
            )
        lines.append("")
    L = r["lite0_bn2"]
    lines += [
        "## efficientnet_lite0 bn2, 48 photos (defaults)",
        "",
        f"Job wall time {L['wall_s']} s (target ≤ {r['targets']['wall_s']} s), renders {L['renders']}, "
        f"{L['features']} features, k {L['k']}; timings {L['timings']}.",
        "",
        "| dictionary | features | EV train | EV held out | L0 | dead | dense | stability | fit s/seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("sae", "nmf", "channels", "naive_topk", "overcomplete_recipe"):
        x = L.get(name)
        if x is None:
            continue
        lines.append(
            f"| {name} | {x.get('features')} | {x['explained_variance']} | {x['explained_variance_held_out']} | "
            f"{x['l0']} | {100 * x['dead_fraction']:.1f} % | {100 * x['dense_fraction']:.1f} % | {x['stability']} | "
            f"{x.get('fit_s_per_seed', '')} |"
        )
    if "stability_curve" in L:
        lines += [
            "",
            "### Stability against size and images",
            "",
            "| training images | features | k | EV train | EV held out | dead | stability |",
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for c in L["stability_curve"]:
            lines.append(
                f"| {c['images']} | {c['features']} | {c['k']} | {c['explained_variance']} | "
                f"{c['explained_variance_held_out']} | {100 * c['dead_fraction']:.1f} % | {c['stability']} |"
            )
    if "scale" in r:
        sc = r["scale"]
        lines += [
            "",
            f"## {sc['images']} images (time and memory)",
            "",
            f"`{sc['command']}`: wall {sc['wall_s']} s (target ≤ 600 s), peak resident memory {sc['peak_rss_gb']} GB "
            f"(target ≤ 3 GB); timings {sc.get('timings')}.",
        ]
    if r.get("not_measured"):
        lines += ["", "Not measured: " + "; ".join(r["not_measured"])]
    lines.append("")
    return "\n".join(lines)


def concepts_shortcut_table(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# concepts on held-out planted-shortcut nets",
        "",
        f"Machine: {m['cpus']} CPUs, torch {m['torch_threads']} thread, load average {m['load_start']} at the start, "
        f"{m['load_end']} at the end (shared: times are upper bounds). Target: {res['target']}.",
        "",
        "| seed | training acc | NMF concepts: top on the mark | dictionary concepts: top on the mark "
        "| dictionary (features, EV held out, stability) |",
        "|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        d, a, b = r["dictionary_run"], r["nmf_concepts"], r["dictionary_concepts"]
        lines.append(
            f"| {r['seed']} | {r['training_accuracy']:.3f} | {a['top_concept_on_mark']:.1%} "
            f"({a['marked_images']}) | {b['top_concept_on_mark']:.1%} (feature "
            f"{b['top_feature']}) | {d['features']}, {d['explained_variance_held_out']}, {d['stability']} |"
        )
    for note in res.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def map_table(res: dict) -> str:
    lines = ["# filterscope map (activation atlas)", ""]
    lines.append(f"Machine: {res['machine']}. The machine was shared with other jobs: see the load averages.")
    if "planted" in res:
        p = res["planted"]
        lines += ["", "## Held-out planted nets (defaults: UMAP, grid 12, renders)", ""]
        lines.append(
            "| classes | distractors | rotation | cells | cells per feature (≥ 70 % one folder) | "
            "every feature has a cell | renders up | wall s |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in p["nets"]:
            per = ", ".join(f"{v}" for v in r["cells_per_feature"].values())
            lines.append(
                f"| {r['classes']} | {r['distractors']} | {r['rotation_seed']} | {r['cells']} | {per} | "
                f"{'yes' if r['every_feature_has_a_cell'] else '**no**'} | "
                f"{r['renders_that_activate_their_direction']}/{r['renders']} | {r['wall_s']} |"
            )
    if "photos" in res:
        q = res["photos"]
        lines += ["", "## efficientnet_lite0 bn2, 48 photos, defaults with renders", ""]
        lines.append(f"- {q['images']} images: 36 bundled + skimage.data {', '.join(q['skimage_images'])}")
        lines.append(f"- `{q['command']}`, torch threads: {q.get('torch_threads', 'default')}")
        lines.append(
            f"- wall **{q['wall_s']} s** (target ≤ {q['target_s']} s: {'met' if q['meets_target'] else '**not met**'})"
            f"; load average before {q['machine_before']['load_avg_1_5_15']}, after "
            f"{q['machine_after']['load_avg_1_5_15']} on {q['machine_before']['cpus']} cores"
        )
        if "cpu_s" in q:
            lines.append(
                f"- CPU time of the process: {q['cpu_s']} s (user + system; under load it includes threads "
                f"waiting for each other): what the run asks of the machine, whatever else runs on it"
            )
        lines.append(f"- timings (s): {q['timings']}")
        lines.append(
            f"- {q['points']} points, grid {q['grid']}, {q['cells']} cells, {q['cells_with_render']} with their "
            f"render ({q['render_method']}): every cell has its render: "
            + ("yes" if q["every_cell_has_its_render"] else "**no**")
        )
    if "preset" in res:
        lines += ["", "## Preset for the cell renders", ""]
        lines.append(
            f"On {len(res['preset']['cells'])} cells of the photo map (one torch thread; load "
            f"{res['preset']['machine']['load_avg_1_5_15']}):"
        )
        lines.append("")
        lines.append("| candidate | median activation along the cell direction | start | median CPU s | median s |")
        lines.append("|---|---|---|---|---|")
        for name, v in res["preset"]["candidates"].items():
            lines.append(
                f"| {name} | {v['median_activation']} | {v['median_start']} | {v['median_cpu_s']} | {v['median_s']} |"
            )
    return "\n".join(lines) + "\n"


def diff_table(res: dict) -> str:
    lines = ["# filterscope diff (issue 46)", ""]
    m = res["machine"]
    lines.append(
        f"Machine: {m['cpus']} CPUs, torch {m['torch']} with {m['threads']} threads, shared with other jobs "
        f"(load average {m['load_start']} at the start, {m['load_end']} at the end): timings are upper bounds."
    )
    if "pairs" in res:
        p = res["pairs"]
        metrics = p.get("metrics", list(p["summary"]))
        lines += ["", "## Held-out backdoor pairs", ""]
        lines.append(
            "Families (`tests/backdoor_net.py`, seeds, mark positions and classes other than the test's): "
            "**plain** — the fine-tune (3 epochs, lr 3e-3) only adds the backdoor, 20 marked of 80 images; "
            "**shift** — the fine-tune is also to thicker strokes; **hard** — the same with a stronger fine-tune "
            "(6 epochs, lr 1e-2) and only 10 marked of 90 images, so that domain fixes dominate the flips."
        )
        lines += ["", "| family | pairs | backdoor class listed first | a top-3 carrier of that class ≥ 80 % marked |"]
        lines.append("|---|---|---|---|")
        for fam, f in p["families"].items():
            lines.append(f"| {fam} | {f['n']} | {f['class_first']}/{f['n']} | {f['carrier_hits']}/{f['n']} |")
        lines += ["", "Pairs where one of the top-3 units by the measure has ≥ 80 % marked top-10 images (first unit's "
                  "mean marked share; top-3 mean marked share):", ""]  # fmt: skip
        fams = [*p["families"], "all"]
        lines.append("| measure | " + " | ".join(fams) + " |")
        lines.append("|---" * (len(fams) + 1) + "|")
        for k, per in p["summary"].items():
            name = f"**{k}** (default)" if k == p.get("default_metric") else k
            cells = [
                f"{s['hits']}/{s['n']} ({s['first_unit_marked_mean']:.2f}; {s['top3_marked_mean']:.2f})"
                for s in (per[f] for f in fams)
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "| family | seed | class | mark | acc A/B | attack | first class (in/out) | target (in/out) | "
                  + " | ".join(metrics) + " |", "|---" * (8 + len(metrics)) + "|"]  # fmt: skip
        for r in p["rows"]:
            cells = [" ".join(f"{v:.1f}" for v in r["measures"][k]["top3_marked"]) for k in metrics]
            tf = r["target_flips"] or [0, 0]
            lines.append(
                f"| {r['family']} | {r['seed']} | {r['target']} | {tuple(r['mark_at'])} | "
                f"{r['clean_accuracy_a']:.2f}/{r['clean_accuracy_b']:.2f} | {r['attack_success_b']:.2f} | "
                f"{r['first_class']} ({r['first_class_flips'][0]}/{r['first_class_flips'][1]}) | "
                f"{tf[0]}/{tf[1]} | " + " | ".join(cells) + " |"
            )
        lines.append("")
        lines.append(
            "Cells of the last table: the marked share of the top-10 images of each of the top-3 units by that "
            "measure. Measures (`filterscope.jobs.diff.metrics`): `r` = 1 − matched r; `attribution` = the unit's "
            "gradient × activation on B's margin (new top-1 − old top-1) over every flipped image, as a share of the "
            "largest; `class` = the same over the flipped images of the class listed first; `mean` = (class + "
            "(1 − r)) / 2; `mean_all` = (attribution + (1 − r)) / 2; `rank` = the mean of the unit's ranks by "
            "`class` and by 1 − r."
        )
    if "lite" in res:
        t = res["lite"]
        c = t["counts"]
        lines += ["", "## efficientnet_lite0 → efficientnet_lite1 at bn2", ""]
        lines.append(
            f"{t['images']} images ({t['images_from']}). Wall time of the CLI, model loading included, no renders: "
            f"**{t['wall_s']} s** (target ≤ 120 s; load average {t['load_at_start']} → {t['load_at_end']}); the run "
            f"itself {t['timings'].get('total_s')} s (pass {t['timings'].get('pass_s')} s, attribution "
            f"{t['timings'].get('attribution_s')} s, writing {t['timings'].get('write_s')} s)."
        )
        lines.append(
            f"Units of B: {c['matched']} matched, {c['new']} new, {c['dead']} dead of {c['units']} "
            f"(all accounted for: {t['all_accounted']}); {c['lost']} units of A lost; median r of the matched "
            f"{t['r_median_matched']}; {t['flipped']} images change their top-1; classes moving most: "
            + ", ".join(f"{n} ({i} in / {o} out)" for n, i, o in t["first_classes"])
            + "."
        )
    return "\n".join(lines) + "\n"


TABLES: dict[str, tuple[Callable[[dict], str], str]] = {
    "bench": (render_table, "python benchmarks/bench_render.py"),
    "bench_quick": (render_table, "python benchmarks/bench_render.py --quick"),
    "layout": (layout_table, "python benchmarks/bench_render.py --layout"),
    "targets": (targets_table, "python benchmarks/bench_targets.py"),
    "explain": (explain_table, "python benchmarks/bench_explain.py"),
    "accent": (accent_table, "python benchmarks/bench_accent.py"),
    "serve": (serve_table, "python benchmarks/bench_serve.py"),
    "serve_guard": (serve_guard_table, "python benchmarks/bench_serve_guard.py"),
    "concepts": (concepts_table, "python benchmarks/bench_concepts.py"),
    "concepts_shortcut": (concepts_shortcut_table, "python benchmarks/bench_concepts.py --shortcut 3 4 5 6"),
    "circuits": (circuits_table, "python benchmarks/bench_circuits.py"),
    "dictionary": (dictionary_table, "python benchmarks/bench_dictionary.py"),
    "map": (map_table, "python benchmarks/bench_map.py"),
    "diff": (diff_table, "python benchmarks/bench_diff.py"),
    "gpu": (gpu_table, "python benchmarks/bench_gpu.py"),
}
