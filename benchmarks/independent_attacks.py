"""Our robust accuracies against independent implementations of the same attacks, on one exported model.

    python benchmarks/independent_attacks.py --model=RUN/export/model.keras --dataset=digits \\
        --epsilon=0.1 --seeds=0,1,2 --libraries=art,torchattacks --out=independent.json

Independent implementations (neither shares code with frep_tf):
  art           IBM's adversarial-robustness-toolbox, in this process on TensorFlow through its
                TensorFlowV2Classifier: FGSM, PGD-50, APGD-CE, APGD-DLR and Square (ART disables
                MIM for TensorFlow; its AutoAttack wrapper needs the multiprocess package, and is
                only the per-point worst case of its attacks, which the comparison forms anyway).
  torchattacks  a PyTorch port of the reference AutoAttack code, in a separate process where Keras
                runs on the torch backend and loads model.keras as a torch module: FGSM, PGD-50,
                MIM-50, APGD-CE, APGD-T, FAB-T, Square and AutoAttack "standard". Needs
                `pip install torch==2.13.0` and `pip install --no-deps torchattacks==3.5.1`.

Every attack uses our evaluation's settings (L-inf eps, PGD/MIM 50 steps of eps/4 with a random
start for PGD, APGD 100 steps, 9 target classes, Square 5000 queries with p_init 0.8) and runs once
per seed. Verdicts:
  per attack  our mean robust accuracy over the seeds vs theirs, same attack and budget;
  headline    our AutoAttack and our worst case over all our attacks are <= every independent
              attack's accuracy at every seed, and no point any independent attack broke is left
              robust by our worst case. The exit status is 1 when the headline fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OURS = ("fgsm", "pgd", "mim", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack")
ART = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square")
TORCHATTACKS = ("fgsm", "pgd", "mim", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack")
LIBRARIES = {"art": ART, "torchattacks": TORCHATTACKS}
INSTALL = {
    "art": "adversarial-robustness-toolbox==1.20.1",
    "torchattacks": "torch==2.13.0, then pip install --no-deps torchattacks==3.5.1",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an exported model.keras (standard Keras layers)")
    parser.add_argument("--dataset", default="digits", help="as main.py's --dataset; the test split is used")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--samples", type=int, default=0, help="first N test points (0: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every attack runs once per seed")
    parser.add_argument("--libraries", default="art,torchattacks", help=f"any of {sorted(LIBRARIES)}")
    parser.add_argument("--attacks", default="", help="restrict to these attack names (default: all)")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--out", default="", help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    libraries = [name for name in args.libraries.split(",") if name]
    unknown = sorted(set(libraries) - set(LIBRARIES))
    if unknown:
        parser.error(f"--libraries={args.libraries}: unknown {unknown}; allowed: {sorted(LIBRARIES)}")
    if not args.model.endswith(".keras") or not os.path.isfile(args.model):
        parser.error(f"--model={args.model}: expected an existing .keras file")
    missing = {
        "art": [m for m in ("art",) if importlib.util.find_spec(m) is None],
        "torchattacks": [m for m in ("torch", "torchattacks") if importlib.util.find_spec(m) is None],
    }
    for lib in libraries:
        if missing[lib]:
            parser.error(
                f"--libraries={args.libraries}: {lib} needs {', '.join(missing[lib])}, not installed "
                f"(pip install {INSTALL[lib]}); or leave {lib} out of --libraries"
            )
    if not args.epsilon > 0:
        parser.error(f"--epsilon={args.epsilon}: must be > 0")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds={args.seeds}: expected comma-separated integers")
    known = set(OURS) | set(ART) | set(TORCHATTACKS)
    attacks = [a for a in args.attacks.split(",") if a]
    if set(attacks) - known:
        parser.error(f"--attacks={args.attacks}: unknown {sorted(set(attacks) - known)}; allowed: {sorted(known)}")
    args.library_list, args.seed_list, args.attack_list = libraries, seeds, attacks or sorted(known)
    return args


def load_test_arrays(args):
    from frep_tf import data
    from frep_tf.data.splits import dataset_arrays

    splits = data.load_dataset(args.dataset, data_dir=args.data_dir or None, batch_size=256, val_size=0, augment=False)
    x, y = dataset_arrays(splits.test, args.samples)
    return x.astype("float32"), y.astype("int32"), splits.info.num_classes


def run_ours(model_fn, x, y, eps, seeds, attacks, batch_size):
    from frep_tf import evaluation

    names = [a for a in OURS if a in attacks]
    points, seconds = {}, {}
    for seed in seeds:
        per_point = {}
        out = evaluation.evaluate_model(
            model_fn,
            x,
            y,
            epsilon=eps,
            attacks=("clean", *names),
            batch_size=batch_size,
            seed=seed,
            sanity=False,
            progress=False,
            per_point=per_point,
        )
        points["clean"] = per_point["clean"]
        for name in names:
            points[f"{name}/{seed}"] = per_point[name]
            seconds[f"{name}/{seed}"] = out[name]["seconds"]
            print(f"ours {name} seed {seed}: {per_point[name].mean():.4f} ({out[name]['seconds']:.1f} s)", flush=True)
    return points, seconds


def run_art(model_fn, x, y, num_classes, eps, seeds, attacks, batch_size):
    import keras
    import numpy as np
    import tensorflow as tf
    from art.attacks import evasion
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(
        model=lambda t, training=False: model_fn(t),
        nb_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    common = {"norm": np.inf, "eps": eps, "batch_size": batch_size, "verbose": False}
    factories = {
        "fgsm": lambda: evasion.FastGradientMethod(classifier, norm=np.inf, eps=eps, batch_size=batch_size),
        "pgd": lambda: evasion.ProjectedGradientDescent(
            classifier, eps_step=eps / 4, max_iter=50, num_random_init=1, **common
        ),
        "apgd-ce": lambda: evasion.AutoProjectedGradientDescent(
            classifier, eps_step=2 * eps, max_iter=100, nb_random_init=1, loss_type="cross_entropy", **common
        ),
        "apgd-dlr": lambda: evasion.AutoProjectedGradientDescent(
            classifier, eps_step=2 * eps, max_iter=100, nb_random_init=1, loss_type="difference_logits_ratio", **common
        ),
        "square": lambda: evasion.SquareAttack(classifier, max_iter=5000, p_init=0.8, nb_restarts=1, **common),
    }
    one_hot = np.eye(num_classes, dtype=np.float32)[y]
    clean = classifier.predict(x).argmax(1) == y
    points, seconds = {}, {}
    for name in [a for a in ART if a in attacks]:
        for seed in seeds:
            np.random.seed(seed)  # ART draws its random starts and Square's windows from numpy
            tf.random.set_seed(seed)
            start = time.perf_counter()
            x_adv = factories[name]().generate(x, y=one_hot)
            seconds[f"{name}/{seed}"] = time.perf_counter() - start
            if np.abs(x_adv - x).max() > eps + 1e-6 or x_adv.min() < 0 or x_adv.max() > 1:
                raise SystemExit(f"ART {name} left the eps-ball or [0, 1]")
            points[f"{name}/{seed}"] = clean & (classifier.predict(x_adv).argmax(1) == y)
            acc = points[f"{name}/{seed}"].mean()
            print(f"art {name} seed {seed}: {acc:.4f} ({seconds[f'{name}/{seed}']:.1f} s)", flush=True)
    points["clean"] = clean
    return points, seconds


def run_torchattacks(model_path, x, y, eps, seeds, attacks):
    import numpy as np

    names = [a for a in TORCHATTACKS if a in attacks]
    with tempfile.TemporaryDirectory() as tmp:
        data_path, out_path = os.path.join(tmp, "data.npz"), os.path.join(tmp, "out.npz")
        np.savez(data_path, x=x, y=y)
        worker = os.path.join(ROOT, "benchmarks", "_torchattacks_worker.py")
        command = [sys.executable, worker, model_path, data_path, out_path, repr(eps), ",".join(map(str, seeds))]
        subprocess.run([*command, ",".join(names)], check=True, env=os.environ | {"KERAS_BACKEND": "torch"})
        with np.load(out_path) as out:
            stored = {key: out[key] for key in out.files}
    seconds = {key[: -len("/seconds")]: float(v) for key, v in stored.items() if key.endswith("/seconds")}
    points = {key: v.astype(bool) for key, v in stored.items() if not key.endswith("/seconds")}
    return points, seconds


def _accuracies(points, name, seeds):
    return [float(points[f"{name}/{s}"].mean()) for s in seeds if f"{name}/{s}" in points]


def compare(ours, independent, seeds):
    """Per-attack and headline verdicts (see the module docstring)."""
    import numpy as np

    rows = []
    for name in sorted({k.split("/")[0] for lib in [ours, *independent.values()] for k in lib if "/" in k}):
        row = {"attack": name, "ours": _accuracies(ours, name, seeds)}
        for lib, points in independent.items():
            row[lib] = _accuracies(points, name, seeds)
        rows.append(row)
    higher = []
    for row in rows:
        if not row["ours"]:
            continue
        for lib in independent:
            if row[lib] and np.mean(row["ours"]) > np.mean(row[lib]):
                higher.append(f"{row['attack']}: ours {np.mean(row['ours']):.2%} > {lib} {np.mean(row[lib]):.2%}")

    our_names = sorted({k.split("/")[0] for k in ours if "/" in k})
    worst = np.logical_and.reduce([ours[f"{n}/{s}"] for n in our_names for s in seeds])
    mine = {"our worst case": worst}
    mine |= {f"our autoattack seed {s}": ours[f"autoattack/{s}"] for s in seeds if f"autoattack/{s}" in ours}
    theirs = {f"{lib} {k}": v for lib, points in independent.items() for k, v in points.items() if "/" in k}
    headline = []
    for label, robust in theirs.items():
        for ours_label, ours_robust in mine.items():
            if ours_robust.mean() > robust.mean():
                headline.append(f"{ours_label} {ours_robust.mean():.2%} > {label} {robust.mean():.2%}")
        missed = int(np.sum(worst & ~robust))
        if missed:
            headline.append(f"{label} broke {missed} points our worst case leaves robust")
    return {
        "rows": rows,
        "ours_higher_per_attack": higher,
        "our_worst_case": float(worst.mean()),
        "independent_worst_case": float(np.logical_and.reduce(list(theirs.values())).mean()) if theirs else None,
        "headline_failures": headline,
        "headline_passed": not headline,
    }


def markdown(comparison, libraries):
    import numpy as np

    def cell(values):
        if not values:
            return "–"
        if len(values) == 1:
            return f"{100 * values[0]:.2f}"
        return f"{100 * np.mean(values):.2f} ({100 * min(values):.2f}–{100 * max(values):.2f})"

    lines = ["| attack | ours | " + " | ".join(libraries) + " |", "|---|---:|" + "---:|" * len(libraries)]
    for row in comparison["rows"]:
        lines.append(
            f"| {row['attack']} | {cell(row['ours'])} | " + " | ".join(cell(row[lib]) for lib in libraries) + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import tensorflow as tf

    from frep_tf.model_io import load_classifier

    x, y, num_classes = load_test_arrays(args)
    model_fn = load_classifier(args.model, input_shape=x.shape[1:], num_classes=num_classes)
    print(
        f"{args.model}: {len(y)} {args.dataset} test points, eps {args.epsilon}, seeds {args.seed_list}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}",
        flush=True,
    )
    ours, ours_seconds = run_ours(model_fn, x, y, args.epsilon, args.seed_list, args.attack_list, args.batch_size)
    independent, seconds = {}, {"ours": ours_seconds}
    for lib in args.library_list:
        if lib == "art":
            points, sec = run_art(
                model_fn, x, y, num_classes, args.epsilon, args.seed_list, args.attack_list, args.batch_size
            )
        else:
            points, sec = run_torchattacks(
                os.path.abspath(args.model), x, y, args.epsilon, args.seed_list, args.attack_list
            )
        if not np.array_equal(points["clean"], ours["clean"]):
            print(
                f"warning: {lib} sees a different clean accuracy: {points['clean'].mean():.4f} vs {ours['clean'].mean():.4f}"
            )
        independent[lib], seconds[lib] = points, sec
    comparison = compare(ours, independent, args.seed_list)
    print(markdown(comparison, args.library_list))
    print(
        f"worst case over all our attacks: {comparison['our_worst_case']:.2%}; "
        f"over all independent attacks: {comparison['independent_worst_case']:.2%}"
    )
    for line in comparison["ours_higher_per_attack"]:
        print("per attack, ours higher:", line)
    for line in comparison["headline_failures"]:
        print("HEADLINE FAILURE:", line)
    print("headline:", "passed" if comparison["headline_passed"] else "FAILED")
    if args.out:
        report = {
            "model": os.path.abspath(args.model),
            "dataset": args.dataset,
            "samples": int(len(y)),
            "epsilon": args.epsilon,
            "seeds": args.seed_list,
            "clean_accuracy": float(ours["clean"].mean()),
            "seconds": seconds,
            **comparison,
        }
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if comparison["headline_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
