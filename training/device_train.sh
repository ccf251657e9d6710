#!/usr/bin/env bash
# Train the three shipped rate points side by side on one lent GPU (KERAS_BACKEND=jax).
# Expects wheels for keras (+ namex, optree) in .whl/ and training photos in data_bundle/
# (see training/README.md); writes each run directory under $OUT.
# Usage: MINUTES=7 bash training/device_train.sh [name:lambda[:from] ...]
# DATA=dir holding the FOLDERS (default "bsds cats"), sampled with WEIGHTS (default "0.4 0.6");
# INIT=dir (holding NAME/checkpoint.npz) or WARM=1 (pillow_kae/weights/kae-NAME.npz, or
# kae-FROM.npz when the spec names one: a new rate point warm-started from a shipped one).
# ARCH=channel-conditional trains y in channel slices (its slice transforms start at zero
# when warm-started from a plain hyperprior); GAIN="LOW HIGH" trains variable-rate.
# ARGS_NAME="..." adds options to the run NAME alone (the last of a repeated option wins),
# e.g. ARGS_top="--channels 192 --latent-channels 320": a wider model widened from FROM.
# Checkpoints over 15 MB come back in parts (the device tool's file limit):
# join them with `python -m training join RUN`.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
specs=("$@")
read -r -a folders <<< "${FOLDERS:-bsds cats}"
read -r -a weights <<< "${WEIGHTS:-0.4 0.6}"
data=("${folders[@]/#/${DATA:-data_bundle}/}")
[ ${#specs[@]} -gt 0 ] || specs=(low:0.0035 mid:0.013 high:0.0483)
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9/${#specs[@]}, 2))")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for spec in "${specs[@]}"; do
    name=${spec%%:*}
    rest=${spec#*:}
    lmbda=${rest%%:*}
    from=$name
    [ "$rest" = "$lmbda" ] || from=${rest#*:}
    init=()
    gain=()
    extra_var="ARGS_$name"
    read -r -a extra <<< "${!extra_var:-}"
    [ -z "${GAIN:-}" ] || read -r -a gain <<< "--gain-steps $GAIN"
    if [ -n "${INIT:-}" ]; then
        init=(--init "$INIT/$name/checkpoint.npz")
    elif [ -n "${WARM:-}" ]; then
        init=(--init "pillow_kae/weights/kae-$from.npz")  # the shipped weights
    fi
    python3 -m training train "${init[@]}" "${gain[@]}" --arch "${ARCH:-hyperprior}" --data "${data[@]}" --weights "${weights[@]}" \
        --lmbda "$lmbda" --steps "${STEPS:-1000000}" --minutes "${MINUTES:-7}" \
        --out "$OUT/$name" --lr "${LR:-3e-4}" --workers 5 --patch "${PATCH:-192}" \
        --batch "${BATCH:-16}" --steps-per-epoch "${SPE:-200}" "${extra[@]}" 2>&1 \
        | grep --line-buffered -v -E "^(WARNING|I0000|E0000)" | sed -u "s/^/[$name] /" \
        >> "$OUT/train.log" &
done
wait
for spec in "${specs[@]}"; do python3 -m training split "$OUT/${spec%%:*}"; done
tail -n 5 "$OUT/train.log"
