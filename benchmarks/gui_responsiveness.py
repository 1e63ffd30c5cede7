"""Does the viewer stay responsive while the widgets train, and does training pay for the GUI?

Run under a display:  ``xvfb-run -a python benchmarks/gui_responsiveness.py``

A napari viewer (shown) holds the bundled ISBI sample (10x384x384) with the dock widget; the
script presses the widget's buttons like a user. While a run is active, a 10 ms QTimer probe
records the gaps between its ticks: a gap of 10 + s ms means the event loop was blocked ~s ms.
Stalls are reported for the whole run and for its steady state (from the second training step,
and at least 1 s after the click, to the last step), since adding a layer (the live preview at
the click, results at the end) and its first draw are napari's own one-off costs.

Arms, in alternating rounds so machine noise hits each alike (fine-tuning, 2D U-Net defaults):
- headless: the same job via ``Job.events`` with the torch threads the widget uses (all cores
  but one), in a plain thread and in the main thread: no GUI at all;
- the same job in a plain thread while the (unchanging) viewer's event loop is probed: the
  stalls that training itself causes (GIL, CPU), before the widget shows anything; once as is
  (a full garbage collection of napari's objects, triggered by the training thread, holds the
  GIL for a few hundred ms) and once with ``gc.freeze()`` as the widget's runner does;
- widget, live preview off / on, nobody touching the viewer;
- widget, preview on, while a timer moves the Z slider every 0.5 s (a user browsing slices);
- widget, preview on, every core given to torch (NAPARI_REGCON_THREADS), for contrast;
- widget, preview off, with the dock floating in its own window: under software OpenGL every
  repaint of a docked widget re-composes the whole window with the canvas (~13 ms or more); a
  floating dock repaints alone, which isolates the widget's own main-thread cost;
- references: the idle viewer, still and with the slider moving (napari's own redraw cost), and
  a first short run that adds the live preview layer (a one-off cost, kept out of the rounds);
- once: pretraining (MIM) and a prediction with probability + uncertainty layers, then the same
  prediction again (the correction loop's: its layers are updated in place).
``--busy N`` keeps N busy-loop processes running at normal priority throughout (a laptop is rarely
idle: ``--busy 2`` loads both cores) and writes ``gui_responsiveness_busyN.*``.
Step time = wall time from step 5 to the last step divided by the steps in between.
Targets (BENCHMARKS.md): longest stall <= 50 ms; GUI step time within 15% of headless.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import (
    busy_processes,
    machine_info,
    markdown_table,
    median,
    spread,
    text_table,
    write_json,
    write_text,
)

STALL_TARGET_MS = 50.0
STEP_TARGET = 1.15


class StallProbe:
    """A QTimer of ``interval_ms``; the gaps between its ticks show how long the loop was blocked."""

    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.interval = interval_ms
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def stats(self, t0: float = -np.inf, t1: float = np.inf) -> dict[str, float]:
        """Gap statistics for ticks that end within [t0, t1]."""
        ticks = np.asarray(self.ticks)
        gaps = np.diff(ticks) * 1000
        inside = (ticks[1:] >= t0) & (ticks[1:] <= t1)
        gaps, ends = gaps[inside], ticks[1:][inside]
        at = float(ends[int(np.argmax(gaps))]) if gaps.size else float("nan")  # when the longest stall ended
        if gaps.size == 0:
            gaps = np.zeros(1)
        return {"ticks": int(gaps.size), "max_stall_ms": float(max(0.0, gaps.max() - self.interval)), "max_stall_end": at,
                "p99_gap_ms": float(np.percentile(gaps, 99)), "median_gap_ms": float(np.median(gaps)),
                "gaps_over_target": int((gaps > self.interval + STALL_TARGET_MS).sum())}


def step_time(samples: list[tuple[float, int]], skip: int = 5) -> float:
    """Seconds per step from (time, step) samples, ignoring the first ``skip`` steps."""
    s = [(t, k) for t, k in samples if k >= skip]
    if len(s) < 2 or s[-1][1] == s[0][1]:
        return float("nan")
    return (s[-1][0] - s[0][0]) / (s[-1][1] - s[0][1])


def headless_finetune(raw: np.ndarray, labels: np.ndarray, steps: int, threads: int,
                      in_thread: bool = False, app: Any = None) -> float:
    """Per-step time of the same fine-tuning job without any GUI (main thread or a plain thread).

    With ``app`` the main thread runs the Qt event loop while the thread trains.
    """
    from napari_regcon.core.workflows import finetune_job

    out: list[float] = []

    def body() -> None:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            job = finetune_job(raw, labels, steps=steps, checkpoint_every=0, class_names=["cell", "membrane"])
            out.append(step_time([(time.perf_counter(), ev.step) for ev in job.events() if ev.event == "step"]))
        finally:
            torch.set_num_threads(old)

    if in_thread:
        t = threading.Thread(target=body)
        t.start()
        if app is not None:
            spin(app, 1e9, until=lambda: not t.is_alive())
        t.join()
    else:
        body()
    return out[0]


def spin(app: Any, seconds: float, until: Callable[[], bool] | None = None) -> None:
    """Run the event loop for ``seconds`` (or until ``until()``)."""
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end and not (until is not None and until()):
        app.processEvents()
        time.sleep(0.001)


def gui_run(app: Any, section: Any, probe: StallProbe, slider: Any = None) -> dict[str, Any]:
    """Press Start, run the event loop until the run ends, return stalls and step time."""
    from napari_regcon._widgets.state import RunState
    from napari_regcon._widgets.updates import StepUpdate

    samples: list[tuple[float, int]] = []

    def on_state(state: RunState) -> None:
        if state == RunState.RUNNING and section.runner.worker is not None:
            section.runner.worker.yielded.connect(
                lambda u: samples.append((time.perf_counter(), u.step)) if isinstance(u, StepUpdate) else None)

    section.status.events.state.connect(on_state)
    probe.start()
    if slider is not None:
        slider.start()
    section.panel.start_button.click()
    t_click = time.perf_counter()
    spin(app, 1e9, until=lambda: section.status.state == RunState.IDLE and not section.runner.running)
    spin(app, 0.2)  # the final layer updates draw
    if slider is not None:
        slider.stop()
    probe.stop()
    section.status.events.state.disconnect(on_state)
    t_last = samples[-1][0] if samples else time.perf_counter()
    t_steady = max(t_click + 1.0, samples[1][0] if len(samples) > 1 else t_click)
    stats = probe.stats()
    # where the longest stall ended: seconds after the click, and relative to the last training step
    stats["max_stall_after_click_s"] = stats.pop("max_stall_end") - t_click
    stats["max_stall_after_last_step_s"] = stats["max_stall_after_click_s"] - (t_last - t_click)
    steady = probe.stats(t_steady, t_last)
    steady.pop("max_stall_end")
    return {"all": stats, "steady": steady, "step_s": step_time(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps per run (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--busy", type=int, default=0,
                        help="busy-loop processes at normal priority meanwhile (a laptop with other programs "
                             "running); results go to gui_responsiveness_busyN.*")
    args = parser.parse_args()
    with busy_processes(args.busy):
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """Every arm, in alternating rounds; results to gui_responsiveness[_busyN].json / .md."""
    name = "gui_responsiveness" + (f"_busy{args.busy}" if args.busy else "")

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_regcon._widgets import RegconWidget
    from napari_regcon._widgets.jobs import THREADS_ENV, cpu_threads
    from napari_regcon.sample_data import VOXEL_SIZE_NM, load_sample

    threads, all_cores = cpu_threads(), os.cpu_count() or 2
    raw, mem = load_sample()
    truth = (mem + 1).astype(np.uint8)  # 1 = cell interior, 2 = membrane
    labels = np.zeros_like(truth)
    labels[0] = truth[0]

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    app = QApplication.instance()
    image = viewer.add_image(raw, name="ISBI 2012 EM", scale=VOXEL_SIZE_NM)
    widget = RegconWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="napari-regcon")
    lab_layer = viewer.add_labels(labels, name="labels", scale=VOXEL_SIZE_NM)
    ft = widget.finetune
    ft.image.set_layer(image)
    ft.labels.set_layer(lab_layer)
    ft.classes.setText("cell, membrane")
    ft.options.steps.setValue(args.steps)
    spin(app, 0.5)

    slider = QTimer()
    slider.setInterval(500)
    slider.timeout.connect(lambda: viewer.dims.set_current_step(0, (viewer.dims.current_step[0] + 1) % raw.shape[0]))
    probe = StallProbe(10)

    def idle(with_slider: bool) -> dict[str, float]:
        probe.start()
        if with_slider:
            slider.start()
        spin(app, 5.0)
        slider.stop()
        probe.stop()
        return probe.stats()

    reference = {"idle_still": idle(False), "idle_slider": idle(True)}
    # the first run adds the live preview layer and draws the first previews: one-off costs
    # (layer creation, first draw of a direct label colormap) kept out of the rounds
    ft.options.steps.setValue(16)
    ft.preview.setChecked(True)
    ft.preview_every = 0.5
    first_run = gui_run(app, ft, probe)
    ft.preview_every = 3.0
    ft.options.steps.setValue(args.steps)
    arms = (("preview_off", False, False, None), ("preview_on", True, False, None),
            ("preview_on_slider", True, True, None), ("preview_on_all_cores", True, False, str(all_cores)),
            ("preview_off_floating", False, False, None))
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        row: dict[str, Any] = {"round": r,
                               "headless_thread_step_s": headless_finetune(raw, labels, args.steps, threads, True),
                               "headless_main_step_s": headless_finetune(raw, labels, args.steps, threads)}
        probe.start()
        row["thread_with_event_loop_step_s"] = headless_finetune(raw, labels, args.steps, threads, True, app)
        probe.stop()
        row["thread_with_event_loop"] = probe.stats()
        gc.freeze()
        probe.start()
        headless_finetune(raw, labels, args.steps, threads, True, app)
        probe.stop()
        gc.unfreeze()
        row["thread_with_event_loop_gc_frozen"] = probe.stats()
        for key, preview, browse, env in arms:
            if env:
                os.environ[THREADS_ENV] = env
            ft.init.select(None)
            ft.preview.setChecked(preview)
            dock.setFloating(key.endswith("floating"))
            spin(app, 0.3)
            row[key] = gui_run(app, ft, probe, slider if browse else None)
            dock.setFloating(False)
            os.environ.pop(THREADS_ENV, None)
        rounds.append(row)
        print(f"round {r}: headless {row['headless_thread_step_s']:.3f} s/step; widget "
              + "; ".join(f"{k} {row[k]['step_s']:.3f} s/step, stall {row[k]['all']['max_stall_ms']:.0f} ms "
                          f"(steady {row[k]['steady']['max_stall_ms']:.0f})" for k, *_ in arms), flush=True)

    pt = widget.pretrain
    pt.images.set_checked([image])
    pt.options.steps.setValue(args.steps)
    spin(app, 1.0)  # the settings' own repaints are not part of the run
    pretrain = gui_run(app, pt, probe)
    print(f"pretrain: longest stall {pretrain['all']['max_stall_ms']:.0f} ms, ending "
          f"{pretrain['all']['max_stall_after_click_s']:.2f} s after the click "
          f"({pretrain['all']['max_stall_after_last_step_s']:+.2f} s from the last step)", flush=True)
    pr = widget.predict
    pr.image.set_layer(image)
    pr.probabilities.setChecked(True)
    pr.uncertainty.setChecked(True)
    spin(app, 1.0)
    predict = gui_run(app, pr, probe)
    spin(app, 1.0)
    # the correction loop's next prediction of the same image: its layers are updated in place
    n_layers = len(viewer.layers)
    predict_again = gui_run(app, pr, probe)
    assert len(viewer.layers) == n_layers, "predicting again added layers instead of updating them"

    def arm(key: str, *path: str) -> list[float]:
        vals = []
        for row in rounds:
            v: Any = row[key]
            for p in path:
                v = v[p]
            vals.append(float(v))
        return vals

    head = [r["headless_thread_step_s"] for r in rounds]
    head_main = [r["headless_main_step_s"] for r in rounds]
    ratio = {k: [g / h for g, h in zip(arm(k, "step_s"), head)] for k, *_ in arms}
    no_touch = arm("preview_off", "all", "max_stall_ms") + arm("preview_on", "all", "max_stall_ms")
    no_touch_steady = arm("preview_off", "steady", "max_stall_ms") + arm("preview_on", "steady", "max_stall_ms")
    summary = {
        "torch_threads_in_widget_runs": threads,
        "longest_stall_ms_first_run_adding_preview_layer": first_run["all"]["max_stall_ms"],
        "longest_stall_ms_training_itself": max(r["thread_with_event_loop"]["max_stall_ms"] for r in rounds),
        "longest_stall_ms_training_itself_gc_frozen":
            max(r["thread_with_event_loop_gc_frozen"]["max_stall_ms"] for r in rounds),
        "longest_stall_ms_training_untouched": max(no_touch),
        "longest_stall_ms_training_untouched_steady": max(no_touch_steady),
        "longest_stall_ms_preview_off_steady": max(arm("preview_off", "steady", "max_stall_ms")),
        "longest_stall_ms_preview_off_floating_dock_steady": max(arm("preview_off_floating", "steady", "max_stall_ms")),
        "longest_stall_ms_browsing_while_training": max(arm("preview_on_slider", "all", "max_stall_ms")),
        "longest_stall_ms_idle_browsing_reference": reference["idle_slider"]["max_stall_ms"],
        "longest_stall_ms_all_cores": max(arm("preview_on_all_cores", "all", "max_stall_ms")),
        "longest_stall_ms_pretrain": pretrain["all"]["max_stall_ms"],
        "longest_stall_ms_predict": predict["all"]["max_stall_ms"],
        "longest_stall_ms_predict_again": predict_again["all"]["max_stall_ms"],
        "step_ratio_median": {k: median(v) for k, v in ratio.items()},
        "step_ratio_spread": {k: spread(v) for k, v in ratio.items()},
        "stall_target_ms": STALL_TARGET_MS, "step_ratio_target": STEP_TARGET,
        # the same training steps (preview off); the live preview adds prediction work and canvas
        # redraws on purpose, so it is reported next to the target, not held to it
        "stall_target_met_preview_off_steady": max(arm("preview_off", "steady", "max_stall_ms")) <= STALL_TARGET_MS,
        "stall_target_met_preview_on_steady": max(arm("preview_on", "steady", "max_stall_ms")) <= STALL_TARGET_MS,
        "step_target_met_same_steps": median(ratio["preview_off"]) <= STEP_TARGET,
        "step_target_met_with_preview": median(ratio["preview_on"]) <= STEP_TARGET,
    }
    result = {"benchmark": "gui_responsiveness", "machine": machine_info(),
              "setup": {"data": "bundled ISBI 2012 crop 10x384x384", "labels": "slice 0 (dense truth, 2 classes)",
                        "network": "2D U-Net base 16, depth 3 (defaults)", "patch": 128, "batch": 8,
                        "steps": args.steps, "rounds": args.rounds, "probe_interval_ms": probe.interval,
                        "slider_moves_every_ms": 500, "torch_threads_widget": threads, "cores": all_cores,
                        "display": os.environ.get("DISPLAY")},
              "reference": reference, "first_run": first_run, "rounds": rounds, "pretrain_gui": pretrain, "predict_gui": predict,
              "predict_again_gui": predict_again,
              "summary": summary}
    result["busy"] = {"processes": args.busy, "loadavg": list(os.getloadavg())}
    write_json(name, result)

    def cell(key: str, part: str) -> str:
        return f"{max(arm(key, part, 'max_stall_ms')):.0f}"

    labels_txt = {"preview_off": "widget, live preview off", "preview_on": "widget, live preview on (default)",
                  "preview_on_slider": "widget, preview on, user moves Z slider every 0.5 s",
                  "preview_on_all_cores": f"widget, preview on, all {all_cores} cores to torch",
                  "preview_off_floating": "widget, preview off, dock floating (no canvas re-composition)"}
    rows = [["idle viewer, still", "—", f"{reference['idle_still']['max_stall_ms']:.0f}", "—"],
            ["first widget run: adds the live preview layer (once)", "—",
             f"{first_run['all']['max_stall_ms']:.0f}", f"{first_run['steady']['max_stall_ms']:.0f}"],
            ["idle viewer, Z slider moving (napari redraws)", "—", f"{reference['idle_slider']['max_stall_ms']:.0f}", "—"],
            [f"headless, plain thread, {threads} torch thread(s)", f"{median(head):.3f}", "—", "—"],
            [f"headless, main thread, {threads} torch thread(s)", f"{median(head_main):.3f}", "—", "—"],
            ["training in a plain thread, viewer unchanged (GIL/CPU only)",
             f"{median([r['thread_with_event_loop_step_s'] for r in rounds]):.3f}",
             f"{max(r['thread_with_event_loop']['max_stall_ms'] for r in rounds):.0f}", "—"],
            ["same, objects frozen for the GC (gc.freeze, as the widget does)", "—",
             f"{max(r['thread_with_event_loop_gc_frozen']['max_stall_ms'] for r in rounds):.0f}", "—"]]
    for k, *_ in arms:
        rows.append([labels_txt[k], f"{median(arm(k, 'step_s')):.3f} ({median(ratio[k]):.2f}x)",
                     cell(k, "all"), cell(k, "steady")])
    rows.append([f"pretrain (MIM) in widget, {args.steps} steps", f"{pretrain['step_s']:.3f}",
                 f"{pretrain['all']['max_stall_ms']:.0f}", f"{pretrain['steady']['max_stall_ms']:.0f}"])
    rows.append(["predict 10x384x384 + probability + uncertainty", "—", f"{predict['all']['max_stall_ms']:.0f}", "—"])
    rows.append(["predict the same image again (its 3 layers updated in place)", "—",
                 f"{predict_again['all']['max_stall_ms']:.0f}", "—"])
    headers = ["run (fine-tuning unless said)", "s/step (ratio to headless)", "longest stall ms", "steady-state ms"]
    print(text_table(headers, rows))
    write_text(f"{name}.md", markdown_table(headers, rows)
               + f"\n\nStalls: worst over {args.rounds} alternating rounds; step times: medians. "
                 f"`xvfb-run -a {result['machine']['command']}`; {result['machine']['date']}; "
                 f"{all_cores} cores shared with other jobs (load average at start "
                 f"{result['machine']['loadavg_start']}); Xvfb with software OpenGL.")
    viewer.close()


if __name__ == "__main__":
    main()
