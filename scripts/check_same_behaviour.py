"""Before/after check for a restructure: the same commands give the same results.

    python scripts/check_same_behaviour.py run CHECKOUT OUT [--data DIR]
    python scripts/check_same_behaviour.py compare OUT_BEFORE OUT_AFTER

``run`` drives the command-line tools of the checkout at CHECKOUT (another
commit's worktree, say) on one small generated dataset and keeps what they
produce under OUT: three seeded CPU trainings (Pillow, DALI's CPU backend,
2-process torchrun with gloo), each with a test set scored at the end, then
evaluate.py with both loaders and predict.py. ``compare`` says, per output,
whether two such folders agree: metrics.json with its timings left out,
best_model.pkl and epoch_N.pkl tensor by tensor, and the evaluate and predict
outputs. Only command lines are used, so any two commits can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SEED = "7"
TIMING_WORDS = ("seconds", "per_s")


def sh(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the checkout ``cwd``, importing that checkout's code (not an installed one)."""
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def make_data(checkout: Path, data: Path) -> None:
    """24 training and 6 test images, written by the checkout's own generator."""
    if (data / "test.json").is_file():
        return
    sh(
        [
            sys.executable,
            "scripts/make_demo_dataset.py",
            "--out",
            str(data),
            "--num_images",
            "30",
            "--size",
            "240x256",
        ],
        checkout,
    )
    entries = json.loads((data / "demo.json").read_text())
    (data / "train.json").write_text(json.dumps(entries[:24]))
    (data / "test.json").write_text(json.dumps(entries[24:]))


def train_args(data: Path, run: Path, loader: str) -> list[str]:
    return [
        "train.py", "--dataset_root", str(data), "--train_json", str(data / "train.json"),
        "--test_json", str(data / "test.json"), "--checkpoint_dir", str(run),
        "--backbone_weights", "none", "--device", "cpu", "--loader", loader,
        "--resize", "240x256", "--train_patch_num", "2", "--val_patch_num", "2",
        "--val_split", "0.25", "--batch_size", "4", "--epochs", "3", "--seed", SEED,
        "--num_workers", "0", "--save_all_epochs", "--no_progress",
    ]  # fmt: skip


def run(checkout: Path, out: Path, data: Path) -> None:
    checkout, out, data = checkout.resolve(), out.resolve(), data.resolve()
    out.mkdir(parents=True, exist_ok=True)
    make_data(checkout, data)
    py = sys.executable
    sh([py, *train_args(data, out / "pillow", "pillow"), "--overwrite"], checkout)
    sh([py, *train_args(data, out / "dali", "dali"), "--overwrite"], checkout)
    ddp = [py, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    sh([*ddp, *train_args(data, out / "ddp", "pillow"), "--overwrite"], checkout)
    ckpt = str(out / "pillow" / "best_model.pkl")
    for loader in ("pillow", "dali"):
        sh([py, "evaluate.py", "--checkpoint", ckpt, "--test_json", str(data / "test.json"),
            "--dataset_root", str(data), "--device", "cpu", "--loader", loader,
            "--output", str(out / f"evaluate_{loader}.json")], checkout)  # fmt: skip
    images = [str(p) for p in sorted((data / "images").glob("*.jpg"))[:5]]
    proc = sh([py, "predict.py", "--checkpoint", ckpt, "--device", "cpu", "--patch_num", "25",
               "--json", *images], checkout)  # fmt: skip
    (out / "predict.json").write_text(proc.stdout)


def _without_timings(obj: object) -> object:
    if isinstance(obj, dict):
        return {
            k: _without_timings(v)
            for k, v in obj.items()
            if not any(word in k for word in TIMING_WORDS)
        }
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def compare(before: Path, after: Path) -> int:
    checks: list[tuple[str, bool]] = []
    for name in ("pillow", "dali", "ddp"):
        ma, mb = (json.loads((d / name / "metrics.json").read_text()) for d in (before, after))
        checks.append((f"{name}/metrics.json", _without_timings(ma) == _without_timings(mb)))
        for pkl in sorted(p.name for p in (before / name).glob("*.pkl")):
            checks.append((f"{name}/{pkl}", _same_weights(before / name / pkl, after / name / pkl)))
    for name in ("evaluate_pillow.json", "evaluate_dali.json", "predict.json"):
        a, b = (json.loads((d / name).read_text()) for d in (before, after))
        checks.append((name, a == b))
    for what, same in checks:
        print(f"{'same     ' if same else 'DIFFERENT'}  {what}")
    bad = sum(not same for _, same in checks)
    print(f"{len(checks) - bad} of {len(checks)} outputs identical")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("checkout", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--data", type=Path, default=Path("/tmp/same_behaviour_data"))
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = p.parse_args()
    if args.command == "run":
        run(args.checkout, args.out, args.data)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
