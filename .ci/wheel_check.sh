#!/usr/bin/env bash
# The installed pipeline, as a user gets it: build the wheel, install it (not editable) into a
# fresh virtualenv with the pipeline and video extras, then, from an empty folder outside the
# repository, run the main job with its console command, record its policy with flowrl-enjoy
# and evaluate it with flowrl-eval. The video's frames are read back and checked: many, not
# blank, and changing. `make wheel-check` runs this; CI runs it after the tests.
#   PYTHON=python3.11 TORCH_SPEC="torch==2.13.0" .ci/wheel_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flowrl-wheel-check.XXXXXX")
echo "wheel check in $WORK"

# 1. the wheel, built as pip builds it for a user (isolated build environment)
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/flowrl_policies-*.whl)
echo "built $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"

# 2. a fresh virtualenv: torch first (else pip resolves a CUDA build), then the wheel
"$PYTHON" -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
"$BIN/python" -m pip install --quiet --upgrade pip
"$BIN/python" -m pip install --quiet $TORCH_SPEC
"$BIN/python" -m pip install --quiet "${WHEEL}[pipeline,video]"

# 3. from an empty folder: nothing of the clone is on the path or under the working folder
mkdir "$WORK/empty" && cd "$WORK/empty"
"$BIN/python" - <<'EOF'
import flowrl, flowrl.experiments, flowrl.configs
for module in (flowrl, flowrl.experiments, flowrl.configs):
    assert "site-packages" in module.__file__, f"{module.__name__} from {module.__file__}"
print("installed copy:", flowrl.__file__)
EOF
start=$(date +%s)
"$BIN/flowrl-train" experiment=main progress_bar=false
echo "flowrl-train experiment=main: $(( $(date +%s) - start )) s"
test -f outputs/main/model.zip && test -f outputs/main/results.json

# 4. watch it: one episode recorded headless (MUJOCO_GL chosen by flowrl-enjoy)
"$BIN/flowrl-enjoy" outputs/main --episodes 1 --video hopper.mp4 --json enjoy.json
"$BIN/flowrl-eval" outputs/main --episodes 2 --json eval.json

# 5. the video: frames read back are many, not blank, and change over the episode
"$BIN/python" - <<'EOF'
import json

import imageio.v3 as iio
import numpy as np

frames = iio.imread("hopper.mp4", index=None)
report = json.load(open("enjoy.json"))
assert frames.ndim == 4 and frames.shape[-1] == 3, frames.shape
count = len(frames)
assert count >= 20, f"only {count} frames"
assert count == report["video"]["frames"], (count, report["video"])
blank = [i for i, f in enumerate(frames) if f.std() < 1.0]
assert not blank, f"blank frames: {blank[:10]}"
steps = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
moving = float((steps > 0).mean())
assert moving > 0.5, f"only {moving:.0%} of consecutive frames differ"
print(
    f"video: {count} frames {frames.shape[2]}x{frames.shape[1]}, pixel std "
    f"{frames.std():.1f}, {moving:.0%} of steps change the frame; "
    f"return {report['deterministic']['return_mean']:.0f}"
)
evaluation = json.load(open("eval.json"))
assert {"deterministic", "stochastic"} <= set(evaluation), evaluation.keys()
EOF
cd "$ROOT" && rm -rf "$WORK"
echo "wheel check passed"
