"""The prepared GPU run's verdicts (tools/gpu_bench.py): the Markdown table of its rows and issue 15's targets,
each MET / NOT MET with its figure. Pure functions of the rows, so the test suite checks them on made-up rows
(tests/test_gpu_bench.py)."""
from __future__ import annotations


def table(rows: list[dict], s: dict, dry: bool) -> str:
    """The Markdown table and the issue's targets, from the rows."""
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    out = [f"\n{s['model']} v1, batch {s['batch']}, {s['size']}x{s['size']}, channels_last; "
           f"{rows[0]['device_name'] if rows else '?'}; {rows[0]['date'] if rows else ''}"
           + ("  (DRY RUN: sizes mean nothing)" if dry else ""), "",
           f"| run | img/s | x compute | data wait | peak {'host RSS' if dry else 'GPU'} MB | notes |",
           "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["kind"] in ("machine", "data", "tests"):
            continue
        note = r.get("skipped") or r.get("error") or ""
        if r["kind"] == "compute":
            note = note or (f"compile {r.get('compile_mode') or 'off (eager)'}, {fmt(r.get('tflops'), '.1f')} TFLOP/s"
                            f"{spread([r.get('step_ms_min'), r.get('step_ms_max')], '; steps ', ' ms', '.1f')}")
            out.append(f"| {r['run']} compute | {fmt(r.get('images_per_s'), ',.0f')} | | | "
                       f"{fmt(r.get('peak_memory_mb'), ',.0f')} | {note} |")
        elif r["kind"] == "end_to_end":
            wait = r.get("data_wait_fraction")
            out.append(f"| {r['run']} | {fmt(r.get('images_per_s'), ',.0f')} | {fmt(r.get('over_compute'), '.3f')} | "
                       f"{fmt(None if wait is None else 100 * wait, '.1f')}{'' if wait is None else ' %'} | | "
                       f"{note or r.get('core_plan', '')} |")
        elif r["kind"] == "gpu_decode":
            note = note or (f"{fmt(r.get('batch_ms'), '.1f')} ms per batch of {r.get('batch_size')}"
                            + (f", {r.get('threads')} threads" if r.get("phase") == "decode_threads" else "")
                            + spread(r.get("images_per_s_per_batch"), "; batches ", " img/s"))
            out.append(f"| {r['run']} (no trainer) | {fmt(r.get('images_per_s'), ',.0f')} | | | | {note} |")
        elif r["kind"] == "loader":
            note = note or (f"{fmt(r.get('per_worker_vs_decode_limit'), '.2f')} x the one-core decode limit "
                            f"({fmt(r.get('decode_limit_per_s'), ',.0f')} img/s) per worker; "
                            f"{fmt(r.get('vs_n_times_one'), '.2f')} x N x one worker; "
                            + (f"{fmt(r['per_worker_vs_parallel_limit'], '.2f')} x what {r['workers']} cores "
                               f"decoding at once give each ({fmt(r.get('decode_limit_parallel_per_s'), ',.0f')} "
                               "img/s); "
                               if r.get("per_worker_vs_parallel_limit") is not None else "")
                            + f"{r.get('core_plan', '')}"
                            + spread(r.get("images_per_s_windows"), "; windows ", " img/s"))
            out.append(f"| {r['run']} (no trainer) | {fmt(r.get('images_per_s'), ',.0f')} | | | | {note} |")
    tests = [r for r in rows if r["kind"] == "tests"]
    for r in tests:
        out.append(f"\nCUDA-only tests: {r.get('summary') or r.get('skipped') or r.get('error')}")
    out += [""] + targets(rows)
    return "\n".join(out)


def targets(rows: list[dict]) -> list[str]:
    """Issue 15's targets, each MET / NOT MET with its figure, or why it could not be judged."""
    ok = lambda r: r.get("images_per_s") is not None  # noqa: E731
    comp = {r.get("compile_mode"): r for r in rows if r["kind"] == "compute" and ok(r)}
    e2e = [r for r in rows if r["kind"] == "end_to_end" and ok(r)]
    loader = [r for r in rows if r["kind"] == "loader" and ok(r)]
    out = []

    def judge(what, value, goal, fmt=".3f"):
        if value is None:
            out.append(f"target {what}: not measured")
        else:
            out.append(f"target {what}: {'MET' if value >= goal else 'NOT MET'} ({value:{fmt}}, goal {goal:{fmt}})")

    best = max((r for r in comp.values() if r.get("compile_mode")), key=lambda r: r["images_per_s"], default=None)
    judge("compiled compute >= 6,000 img/s" + (f" (best: {best['compile_mode']})" if best else ""),
          best and best["images_per_s"], 6000, ",.0f")
    gpu = [r for r in e2e if r.get("decode") == "gpu" and r.get("compile_mode")]
    judge("end to end, GPU decode >= 0.95 x compiled compute", max((r["over_compute"] for r in gpu), default=None),
          0.95)
    cpu = [r for r in e2e if r.get("decode") == "cpu" and not r.get("compile_mode")]
    judge("end to end, CPU decode >= 0.95 x eager compute", max((r["over_compute"] for r in cpu), default=None), 0.95)
    for mode in (None, "default"):
        pair = {r["affinity"]: r for r in e2e if r.get("decode") == "cpu" and r.get("compile_mode") == mode}
        if "plan" in pair and "none" in pair:
            out.append(f"layout, CPU decode, {'eager' if mode is None else 'compiled'}: "
                       + layout(pair["plan"], pair["none"]))
    scaling = [r for r in loader if r["workers"] > 1 and r.get("vs_n_times_one") is not None]
    judge("loader N workers >= 0.9 N x one (worst N)", min((r["vs_n_times_one"] for r in scaling), default=None), 0.9)
    judge("loader per worker >= 0.85 x decode limit (worst N)",
          min((r["per_worker_vs_decode_limit"] for r in loader), default=None), 0.85)
    return out


def layout(plan: dict, none: dict) -> str:
    """Which core layout won, from the median rounds; where both ran several rounds and their ranges overlap, the
    difference is within the run's own spread and neither is called the winner."""
    figures = f"{plan['images_per_s']:,.0f} pinned vs {none['images_per_s']:,.0f} unpinned img/s"
    p, n = plan.get("images_per_s_rounds") or [], none.get("images_per_s_rounds") or []
    if len(p) > 1 and len(n) > 1 and min(p) <= max(n) and min(n) <= max(p):
        return (f"neither wins beyond the rounds' spread ({figures}, medians; rounds {min(p):,.0f}-{max(p):,.0f} "
                f"pinned, {min(n):,.0f}-{max(n):,.0f} unpinned)")
    win = "pinned (core plan)" if plan["images_per_s"] >= none["images_per_s"] else "unpinned"
    rounds = f", medians of {len(p)} rounds" if len(p) > 1 else ", one round each" if len(p) == 1 else ""
    return f"{win} wins ({figures}{rounds})"


def spread(values, before: str, after: str, f: str = ",.0f") -> str:
    """The min-max of a row's per-step or per-window figures for a table note; "" when the row has none."""
    if not values or None in values:
        return ""
    return f"{before}{min(values):{f}}-{max(values):{f}}{after}"
