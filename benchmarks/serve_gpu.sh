#!/bin/bash
# The serving figures of the GPU machine (benchmarks/results/serve-h100-*.json): launch the
# full pipeline (embedded default model, model stages on CUDA) and run `bench serve` on text
# and, unless NO_IMAGE is set, on images; results, logs and each run's spans (spans-text.jsonl,
# spans-image.jsonl, for `autoglm profile --input`) go to $OUT. Run through the device
# tool from the repository root, with the cp312 wheels the machine lacks in .whl/ (carried).
# Triton's cache is cleared first, so kernels compiled while serving show (and are listed).
rm -rf ~/.triton/cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null
python3 -m launch.cli launch --instance g4 --port 18502 > $OUT/launch.log 2>&1 &
LP=$!
for i in $(seq 1 360); do curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:18502/health | grep -q 200 && break; sleep 0.5; done
sleep 2
ls ~/.triton/cache | sort > /tmp/before.txt
B="python3 -m launch.cli bench serve --base-url http://127.0.0.1:18502 --instance g4"
$B --dataset random --num-prompts 40 --request-rate 2 --random-input-len 32 --random-output-len 16 --result-file $OUT/serve-h100-random.json --record $OUT/spans-text.jsonl > $OUT/serve-text.log 2>&1
[ -n "$NO_IMAGE" ] || $B --dataset random-image --num-prompts 20 --request-rate 0.5 --random-input-len 32 --random-output-len 16 --result-file $OUT/serve-h100-random-image.json --record $OUT/spans-image.jsonl > $OUT/serve-image.log 2>&1
ls ~/.triton/cache | sort > /tmp/after.txt
echo "kernels compiled during serving:"; for d in $(comm -13 /tmp/before.txt /tmp/after.txt); do ls ~/.triton/cache/$d | grep -v json | head -2; done
kill -INT $LP; wait $LP
grep -E "overhead|hand-off|TTFT|TPOT" $OUT/serve-text.log $OUT/serve-image.log | head -30
grep -E "latency|ready in|warmed" $OUT/launch.log | head
