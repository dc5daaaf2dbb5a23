#!/bin/bash
# The serving figures of the GPU machine (benchmarks/results/serve-<gpu>-*.json, <gpu> = h100,
# h200, ...): launch the full pipeline (embedded default model, model stages on CUDA) and run
# `bench serve` on text and, unless NO_IMAGE is set, on screenshots; results, logs and each
# run's spans (spans-*.jsonl, for `autoglm profile --input`) go to $OUT, the logs and spans
# packed in serve-logs.tar.gz (the device tool brings back only a few files).
# With RESIZE_AB set, the screenshot run is repeated on a pipeline whose gateway resizes frames
# (vision params.resize_frames = false), then once more on the default one, for an A/B of where
# the resize runs. With MEDIA_AB set, four clients send screenshots at once, to a pipeline whose
# gateway decodes them on its own core and to the default one (decoding on the spare cores).
# Run through the device tool from the repository root, with the cp312 wheels
# the machine lacks in .whl/ (carried). Triton's cache is cleared first, so kernels compiled
# while serving show (and are listed).
rm -rf ~/.triton/cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o -i -E '[A-Z][0-9]{2,3}' | head -1 | tr A-Z a-z)
GPU=${GPU:-gpu}
cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null
PORT=18502

launch() {   # launch SPEC LOG: start the pipeline and wait for /health
    local t0=$SECONDS
    python3 -m launch.cli launch "$1" --instance g4 --port $PORT > "$2" 2>&1 &
    LP=$!
    for i in $(seq 1 360); do curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:$PORT/health | grep -q 200 && break; sleep 0.5; done
    echo "$1: healthy after $((SECONDS - t0)) s"
    sleep 2
}
stop() { kill -INT $LP; wait $LP; }
with_param() {   # with_param STAGE 'KEY = VALUE': the default spec, one param added to STAGE's
    python3 - "$1" "$2" <<'PY'
import sys
stage, extra = sys.argv[1:]
s = open("launch/specs/default.toml").read()
old = 'params = { compute = "model" }'
at = s.index(old, s.index(f"[stages.{stage}]"))
print(s[:at] + 'params = { compute = "model", ' + extra + ' }' + s[at + len(old):], end="")
PY
}

B="python3 -m launch.cli bench serve --base-url http://127.0.0.1:$PORT --instance g4"
image() {    # image NAME: the screenshot run
    $B --dataset random-image --num-prompts 20 --request-rate 0.5 --random-input-len 32 --random-output-len 16 --result-file $OUT/serve-$GPU-$1.json --record $OUT/spans-$1.jsonl > $OUT/serve-$1.log 2>&1
}

launch launch/specs/default.toml $OUT/launch.log
ls ~/.triton/cache | sort > /tmp/before.txt
$B --dataset random --num-prompts 40 --request-rate 2 --random-input-len 32 --random-output-len 16 --result-file $OUT/serve-$GPU-random.json --record $OUT/spans-random.jsonl > $OUT/serve-text.log 2>&1
[ -n "$NO_IMAGE" ] || image random-image
ls ~/.triton/cache | sort > /tmp/after.txt
echo "kernels compiled during serving:"; for d in $(comm -13 /tmp/before.txt /tmp/after.txt); do ls ~/.triton/cache/$d | grep -v json | head -2; done
stop

if [ -n "$RESIZE_AB" ]; then
    with_param vision "resize_frames = false" > /tmp/gateway-resize.toml
    grep -A7 "stages.vision" /tmp/gateway-resize.toml | grep params
    launch /tmp/gateway-resize.toml $OUT/launch-gateway-resize.log
    image random-image-gateway-resize
    stop
    launch launch/specs/default.toml $OUT/launch-2.log
    image random-image-2
    stop
fi
if [ -n "$MEDIA_AB" ]; then
    # Four phones at once: screenshots decoded on the gateway's own core (media_cores none),
    # then on the cores no stage is pinned to (the default).
    with_param gateway 'media_cores = "none"' > /tmp/media-none.toml
    concurrent() {
        $B --dataset random-image --num-prompts 32 --max-concurrency 4 --request-rate inf --random-input-len 32 --random-output-len 16 --result-file $OUT/serve-$GPU-$1.json --record $OUT/spans-$1.jsonl > $OUT/serve-$1.log 2>&1
    }
    launch /tmp/media-none.toml $OUT/launch-media-none.log
    concurrent random-image-c4-gateway-core
    stop
    launch launch/specs/default.toml $OUT/launch-media.log
    concurrent random-image-c4
    stop
    grep -h "decoded on" $OUT/launch-media*.log
fi
grep -E "overhead|hand-off|TTFT|TPOT" $OUT/serve-*.log | head -60
grep -E "latency|ready in|warmed|resize" $OUT/launch*.log | head -20
(cd $OUT && tar czf serve-logs.tar.gz *.log spans-*.jsonl && rm -f *.log spans-*.jsonl)
