"""MetaSchedule tuning: edgec's hand schedules vs ``--tune TRIALS`` vs onnxruntime.

For each model: compile with edgec's hand schedules, then with ``--tune TRIALS`` into a fresh
records folder (a kernel keeps its tuned schedule only where that measured better than the
hand one). Host (``--target host``): time the two binaries and onnxruntime (same thread count),
alternating, and print medians and the ratios tuned/hand and each against onnxruntime. ARM
(``--target arm-a72`` etc.): tuning scored candidates by exact instruction counts under qemu
(targets/cpu/tune_count.py); both binaries are verified against onnxruntime and the exact
instructions of one inference of each are counted (examples/armcount, as
bench_arm_count.py does), printing tuned/hand. Instructions are not time on a board (cache
misses, bandwidth and dual issue are not in them). Also: tuning time, how many kernels were
tuned, and how many took the tuned schedule.

    python examples/bench_tune.py [--models cnn,squeezenet] [--trials 16] [--runs 20]
                                  [--threads 1] [--db DIR] [--target host|arm-a72|...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_arm import OrtTimer, binary_median_ms, prepare  # noqa: E402

from toolchain.cli import main as edgec  # noqa: E402


def build(path: Path, out: Path, shape_args: list[str], threads: int, *flags: str,
          target: str = "host") -> dict:
    rc = edgec(["compile", str(path), "-t", target, "-o", str(out), "--threads", str(threads),
                *shape_args, *flags])
    if rc != 0:
        raise SystemExit(f"compile failed for {path} {' '.join(flags)}")
    return json.loads((out / "report.json").read_text())


def prepared_models(args):
    """Each model of ``--models``, prepared in one temporary folder (removed after the last):
    ``(name, path, shape_args, folder, records folder)``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = args.db or folder / "db"
        for name in args.models.split(","):
            yield (name, *prepare(name, folder), folder, db)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,squeezenet")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--db", type=Path, default=None,
                    help="records folder (default: a fresh temporary one, so tuning runs)")
    ap.add_argument("--target", default="host",
                    help="host (timed) or an emulated CPU target such as arm-a72 (counted)")
    args = ap.parse_args()
    print("command: python examples/bench_tune.py " + " ".join(sys.argv[1:]))
    if args.target != "host":
        return main_counted(args)
    rows = []
    for name, path, shape_args, folder, db in prepared_models(args):
        build(path, folder / f"{name}-hand", shape_args, args.threads)
        report = build(path, folder / f"{name}-tuned", shape_args, args.threads,
                       "--tune", str(args.trials), "--tune-db", str(db))
        tuning = report["tuning"]
        timer = OrtTimer(path, args.threads)
        t = {"ort": [], "hand": [], "tuned": []}
        for _ in range(3):  # alternating, so machine noise hits all three alike
            t["ort"].append(statistics.median(timer.times_ms(args.runs)))
            t["hand"].append(binary_median_ms(folder / f"{name}-hand" / "model", args.runs))
            t["tuned"].append(binary_median_ms(folder / f"{name}-tuned" / "model", args.runs))
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append((name, med, tuning))
        print(f"{name}: done", file=sys.stderr)
    print(f"host, {args.threads} thread(s), {args.trials} trials per kernel; medians of "
          f"3 x {args.runs} runs (ms)")
    print(f"{'model':<12}{'ORT':>9}{'hand':>9}{'tuned':>9}{'tuned/hand':>11}{'hand/ORT':>9}"
          f"{'tuned/ORT':>10}{'kernels tuned':>14}{'took tuned':>11}{'tune s':>8}")
    for name, m, tuning in rows:
        kernels = {k["workload"] for k in tuning["kernels"]}
        took = len({k["workload"] for k in tuning["kernels"] if k["schedule"] == "tuned"})
        print(f"{name:<12}{m['ort']:9.3f}{m['hand']:9.3f}{m['tuned']:9.3f}"
              f"{m['tuned'] / m['hand']:11.2f}{m['hand'] / m['ort']:9.2f}"
              f"{m['tuned'] / m['ort']:10.2f}{len(kernels):>14}{took:>11}"
              f"{tuning['seconds']:8.0f}")


def main_counted(args) -> None:
    """--target ARM: instructions per inference of the hand and the tuned binary."""
    from bench_arm_count import edgec_count, model_input

    from toolchain.commands.build import verify_folder

    rows = []
    for name, path, shape_args, folder, db in prepared_models(args):
        _, x_bin, _ = model_input(path, folder)
        hand_out, tuned_out = folder / f"{name}-hand", folder / f"{name}-tuned"
        build(path, hand_out, shape_args, 1, target=args.target)
        tuning = build(path, tuned_out, shape_args, 1, "--tune", str(args.trials),
                       "--tune-db", str(db), target=args.target)["tuning"]
        checks = [verify_folder(out, seed=1) for out in (hand_out, tuned_out)]
        errors = [max(c.max_abs_error for c in cs) for cs in checks]
        ok = all(c.ok for cs in checks for c in cs)
        hand = edgec_count(hand_out, x_bin, False)["per_inference"]
        tuned = edgec_count(tuned_out, x_bin, False)["per_inference"]
        rows.append((name, hand, tuned, ok, errors, tuning))
        print(f"{name}: done", file=sys.stderr)
    print(f"{args.target}, 1 thread, {args.trials} trials per kernel; exact guest instructions "
          "of one inference under qemu (not time)")
    print(f"{'model':<12}{'hand':>13}{'tuned':>13}{'tuned/hand':>11}{'kernels tuned':>14}"
          f"{'took tuned':>11}{'tune s':>8}  verify (max abs err hand/tuned)")
    for name, hand, tuned, ok, errors, tuning in rows:
        kernels = {k["workload"] for k in tuning["kernels"]}
        took = len({k["workload"] for k in tuning["kernels"] if k["schedule"] == "tuned"})
        print(f"{name:<12}{hand:13,d}{tuned:13,d}{tuned / hand:11.3f}{len(kernels):>14}"
              f"{took:>11}{tuning['seconds']:8.0f}  {'ok' if ok else 'FAILED'} "
              f"({errors[0]:.1e}/{errors[1]:.1e})")
    for name, _, _, _, _, tuning in rows:  # where the difference comes from
        for k in tuning["kernels"]:
            if k["schedule"] == "tuned":
                print(f"  {name} {k['kernel']}: one call {k['hand_instructions']:,.0f} hand -> "
                      f"{k['tuned_instructions']:,.0f} tuned")


if __name__ == "__main__":
    main()
