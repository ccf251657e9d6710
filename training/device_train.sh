#!/usr/bin/env bash
# Train the three shipped rate points side by side on one lent GPU (KERAS_BACKEND=jax).
# Expects wheels for keras (+ namex, optree) in .whl/ and training photos in data_bundle/
# (see training/README.md); writes each run directory under $OUT.
# Usage: MINUTES=7 bash training/device_train.sh [name:lambda ...]
# DATA=dir (holding bsds/ and cats/); INIT=dir (holding NAME/checkpoint.npz) or WARM=1
# (pillow_kae/weights/kae-NAME.npz) to warm-start.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(low:0.0035 mid:0.013 high:0.0483)
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9/${#specs[@]}, 2))")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for spec in "${specs[@]}"; do
    name=${spec%%:*}
    init=()
    if [ -n "${INIT:-}" ]; then
        init=(--init "$INIT/$name/checkpoint.npz")
    elif [ -n "${WARM:-}" ]; then
        init=(--init "pillow_kae/weights/kae-$name.npz")  # the shipped weights
    fi
    python3 -m training train "${init[@]}" --data "${DATA:-data_bundle}/bsds" \
        "${DATA:-data_bundle}/cats" --weights 0.4 0.6 \
        --lmbda "${spec##*:}" --steps "${STEPS:-1000000}" --minutes "${MINUTES:-7}" \
        --out "$OUT/$name" --lr "${LR:-3e-4}" --workers 5 --patch "${PATCH:-192}" \
        --batch "${BATCH:-16}" --steps-per-epoch "${SPE:-200}" 2>&1 \
        | grep --line-buffered -v -E "^(WARNING|I0000|E0000)" | sed -u "s/^/[$name] /" \
        >> "$OUT/train.log" &
done
wait
tail -n 5 "$OUT/train.log"
