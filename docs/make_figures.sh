#!/usr/bin/env bash
# Re-makes the README's figures (docs/*_demo.png) from a finished demo run:
#   python train.py --preset demo --out runs/demo      # about 30 min on 2 quiet CPU cores
#   bash docs/make_figures.sh runs/demo
# Each figure is drawn into RUN/figures by visualize.py, then stored in docs/ as a
# 256-colour PNG of at most 400 KB (docs/shrink_png.py). Transfer trains linear
# classifiers and small scratch networks: about 5 min here.
set -euo pipefail
run=${1:?usage: bash docs/make_figures.sh RUN_FOLDER}
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/imagenette}
figures="$run/figures"

python visualize.py evolution "$run"
python visualize.py topk "$run" --layers conv1 conv2 conv5 --limit 1000
python visualize.py occlusion "$run"
python visualize.py filters "$run"
python visualize.py convergence "$run"
python visualize.py transfer "$run" --data "$data" --limit 2000 --test-limit 1000 \
    --per-class 1 5 15 30 --draws 5 --scratch-epochs 10

python docs/shrink_png.py \
    "$run/curves.png" docs/curves_demo.png \
    "$figures/evolution.png" docs/evolution_demo.png \
    "$figures/topk_conv5.png" docs/topk_conv5_demo.png \
    "$figures/occlusion.png" docs/occlusion_demo.png \
    "$figures/filters.png" docs/filters_demo.png \
    "$figures/convergence.png" docs/convergence_demo.png \
    "$figures/transfer.png" docs/transfer_demo.png
